"""Diff pruning: the hard-concrete gates and expected L0 of Louizos et al. / the authors' code,
and one config that runs the gated stage, the projection and the fixed-mask stage, resuming
exactly from a checkpoint in either stage."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import tiny_runs
import unified_petl as up
from unified_petl import masks as masks_lib
from unified_petl.delta.diff_pruning import expected_l0, gated_delta, hard_concrete
from unified_petl.train import load_delta, train
from unified_petl.train.writer import read_metrics


class Crash(Exception):
    pass


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("lower,upper,beta", [(-1.5, 1.5, 1.0), (-0.1, 1.1, 2.0 / 3.0)])
def test_gates_follow_the_hard_concrete_formulas(lower, upper, beta):
    log_alpha = jnp.linspace(-4.0, 4.0, 9)
    # test time: min(1, max(0, σ(log α)(r - l) + l)) (Louizos et al. eq. 13)
    np.testing.assert_allclose(
        hard_concrete(log_alpha, None, lower, upper, beta),
        np.clip(_sigmoid(np.asarray(log_alpha)) * (upper - lower) + lower, 0, 1), rtol=1e-6)
    # sampled: the authors' concrete_stretched with u from the same key (beta = their 1)
    key = jax.random.key(3)
    big = jnp.broadcast_to(log_alpha, (40000, 9))
    z = np.asarray(hard_concrete(big, key, lower, upper, beta))
    u = np.asarray(jax.random.uniform(key, big.shape, jnp.float32, 1e-4, 1 - 1e-4))
    s = _sigmoid((np.log(u) - np.log(1 - u) + np.asarray(big)) / beta)
    np.testing.assert_allclose(z, np.clip(s * (upper - lower) + lower, 0, 1), atol=1e-6)
    # the expected L0 is the probability of a non-zero gate (Monte Carlo)
    p = np.asarray(expected_l0(log_alpha, lower, upper, beta))
    np.testing.assert_allclose(p, _sigmoid(np.asarray(log_alpha) - beta * math.log(-lower / upper)),
                               rtol=1e-6)
    np.testing.assert_allclose((z > 0).mean(0), p, atol=0.01)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    return folder, train_file, eval_file


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_one_config_runs_both_stages_and_resumes_in_either(setup, tmp_path):
    folder, train_file, eval_file = setup
    method = "diff_pruning(density=0.3, steps=3, l0=1e-3, structured=true)"
    config = tiny_runs.tiny_config(folder, train_file, eval_file, method=method, total_steps=6,
                                   checkpoint_every=2)
    whole = str(tmp_path / "whole")
    results = train(config, whole)
    assert results["step"] == 3 and "stage1" in results  # stage 2: 6 - 3 steps

    crashes = [2, 5]  # a checkpoint in stage 1 (step 2), one in stage 2 (global step 5)

    def crash(step, state):
        if crashes and step == crashes[0]:
            crashes.pop(0)
            raise Crash()

    broken = str(tmp_path / "broken")
    for _ in range(2):
        with pytest.raises(Crash):
            train(config, broken, hooks=[crash])
    train(config, broken, hooks=[crash])
    assert not crashes
    for sub in ("stage1", ""):
        assert _losses(os.path.join(broken, sub)) == _losses(os.path.join(whole, sub)), sub
    stage1 = read_metrics(os.path.join(whole, "stage1"))
    assert all(r["penalty"] > 0 for r in stage1 if "penalty" in r) and any(
        "penalty" in r for r in stage1)

    base = up.load_pretrained(folder)
    model, delta = load_delta(os.path.join(whole, "delta.safetensors"), base)
    _, again = load_delta(os.path.join(broken, "delta.safetensors"), base)
    for x, y in zip(jax.tree.leaves(delta), jax.tree.leaves(again)):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    # the projection: the top k of |ẑ ⊙ w| (test-time gates) over all weights, the head
    # inside the budget; stage 2 started from those values and the stage-1 head
    mask = masks_lib.SparseMask.load(os.path.join(whole, "mask.safetensors"), base)
    term = up.parse_method(method).diff
    _, gated = load_delta(os.path.join(whole, "stage1", "delta.safetensors"), base)
    values = {p: np.asarray(v) for p, v in gated_delta(term, gated).items()}
    head = sum(np.size(v) for k, v in traverse_util.flatten_dict(gated, sep="/").items()
               if k.startswith("classifier"))
    weights = sum(v.size for v in values.values())
    assert mask.k == round(0.3 * (weights + head)) - head
    kept = np.concatenate([np.abs(values[p])[mask.masks[p]] for p in sorted(values)])
    dropped = np.concatenate([np.abs(values[p])[~mask.masks[p]] for p in sorted(values)])
    assert kept.min() >= dropped.max()
    _, start = load_delta(os.path.join(whole, "stage2_init.safetensors"), base)
    flat_start = traverse_util.flatten_dict(start, sep="/")
    for path, m in mask.masks.items():
        if m.any():
            np.testing.assert_array_equal(flat_start[path + "_sparse"],
                                          values[path].reshape(-1)[m.reshape(-1)])
    assert model.method.sparse.counts == mask.counts()
    saved = json.load(open(os.path.join(whole, "results.json")))
    assert saved["trained_params"] == mask.k + head


def test_gated_model_starts_as_the_base(setup):
    base = up.load_pretrained(setup[0])
    model = up.build(base.config, "diff_gates(density=0.1)")
    ids = np.array([[0, 5, 6, 7, 2]], np.int32)
    delta = up.init_delta(model, jax.random.key(0), params=base.params)
    names = {k.rsplit("/", 1)[-1] for k in traverse_util.flatten_dict(delta, sep="/")}
    assert any(n.endswith("_diff") for n in names) and any(n.endswith("_log_alpha") for n in names)
    reference = up.build(base.config, "none").apply({"params": base.params}, ids)
    out = model.apply({"params": base.params, "delta": delta}, ids)
    np.testing.assert_array_equal(np.asarray(out.last_hidden_state),
                                  np.asarray(reference.last_hidden_state))
