"""Child-Tuning: F's Bernoulli mask is unbiased and a resumed run draws the same masks; D
updates exactly its Fisher-chosen layer weights and leaves the others to plain AdamW."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import tiny_runs
import unified_petl as up
from unified_petl import masks as masks_lib
from unified_petl.train import load_delta, train
from unified_petl.train.child_tuning import mask_gradients
from unified_petl.train.writer import read_metrics


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    return folder, train_file, eval_file


def test_f_mask_is_unbiased():
    """E[mask ⊙ g / p] = g: the mean of many masked gradients is the gradient, and a fraction
    p of the entries is kept."""
    p = 0.3
    term = up.parse_method(f"child_tuning(mode=F, p={p})").terms[0]
    tx = mask_gradients(term)
    rng = np.random.default_rng(0)
    g = {"params": {"w": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32)},
         "delta": {"b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}}
    state = tx.init(g)
    n = 20000
    masked = jax.jit(jax.vmap(lambda key: tx.update(g, state, mask_key=key)[0]))(
        jax.random.split(jax.random.key(0), n))
    for path, grad in traverse_util.flatten_dict(g, sep="/").items():
        draws = np.asarray(traverse_util.flatten_dict(masked, sep="/")[path])
        kept = draws != 0
        assert abs(kept.mean() - p) < 0.01, path
        np.testing.assert_allclose(draws[kept], np.broadcast_to(grad / p, draws.shape)[kept],
                                   rtol=1e-6)
        sigma = np.abs(np.asarray(grad)) * np.sqrt((1 - p) / p / n)  # std of the mean
        z = np.abs(draws.mean(0) - np.asarray(grad)) / sigma
        assert z.max() < 5.5, (path, z.max())
    # different steps draw different masks
    a, b = (tx.update(g, state, mask_key=jax.random.key(s))[0] for s in (1, 2))
    assert not np.array_equal(np.asarray(a["params"]["w"]), np.asarray(b["params"]["w"]))


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_f_resumed_run_equals_uninterrupted(setup, tmp_path):
    folder, train_file, eval_file = setup
    config = tiny_runs.tiny_config(folder, train_file, eval_file, method="child_tuning(mode=F)",
                                   total_steps=5, checkpoint_every=2)
    whole = str(tmp_path / "whole")
    train(config, whole)

    def crash(step, state):
        if step == 3:
            raise Crash()

    broken = str(tmp_path / "broken")
    with pytest.raises(Crash):
        train(config, broken, hooks=[crash])
    train(config, broken)
    assert _losses(broken) == _losses(whole)
    base = up.load_pretrained(folder)
    a = load_delta(os.path.join(whole, "delta.safetensors"), base)[1]
    b = load_delta(os.path.join(broken, "delta.safetensors"), base)[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_d_updates_its_fisher_mask_and_everything_outside_the_layers(setup, tmp_path):
    """One step with weight decay 0: Adam moves a layer weight iff the mask keeps it (its
    moments start at 0); embeddings and the head, never masked, move as in plain AdamW."""
    folder, train_file, eval_file = setup
    config = tiny_runs.tiny_config(folder, train_file, eval_file, total_steps=1,
                                   method="child_tuning(mode=D, p=0.3, num_examples=16)")
    config.optim.warmup_steps = 0
    config.optim.weight_decay = 0.0
    workdir = str(tmp_path / "d")
    train(config, workdir)
    base = up.load_pretrained(folder)
    mask = masks_lib.SparseMask.load(os.path.join(workdir, "mask.safetensors"), base)
    assert mask.criterion == "fisher" and mask.num_examples == 16 and mask.head == 0
    assert all(p.startswith("encoder_layer_") for p in mask.masks)
    assert mask.k == round(0.3 * sum(m.size for m in mask.masks.values()))
    _, trained = load_delta(os.path.join(workdir, "delta.safetensors"), base)
    before = traverse_util.flatten_dict(base.params, sep="/")
    after = traverse_util.flatten_dict(trained["params"], sep="/")
    moved_outside = 0
    for path, w in before.items():
        moved = np.asarray(after[path]) != np.asarray(w)
        if path in mask.masks:
            assert not moved[~mask.masks[path]].any(), path  # masked: untouched
            if mask.masks[path].any():  # (a key bias has no gradient: never chosen)
                assert moved[mask.masks[path]].mean() > 0.95, path
        else:
            moved_outside += int(moved.sum())
    assert moved_outside > 0  # embeddings and LayerNorms of the embeddings
    assert trained["delta"]  # the new head is trained
