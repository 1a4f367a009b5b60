"""Element-wise sparse Δh: training touches exactly the k chosen weights, FISH's Fisher equals a
per-example PyTorch loop, storage is exact, counts are k, 8 devices = 1, resume is exact, and
bad input is one line."""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

import tiny_runs
import unified_petl as up
from conftest import padded_batch, tiny_hf_model
from unified_petl import masks as masks_lib
from unified_petl.data.batching import Encoded, Ragged
from unified_petl.delta.sparse import SparseError, merge_sparse
from unified_petl.models.loading import _strip_body_prefix, hf_key
from unified_petl.train import CheckpointMismatch, load_delta, save_delta, train
from unified_petl.train.fisher import fisher_scores
from unified_petl.train.setup import frozen_params
from unified_petl.train.step import make_mesh
from unified_petl.train.writer import read_metrics

# layer weights only: every one of them gets a gradient on every batch (an embedding row of
# a word absent from the data would not, and its value would stay exactly 0)
METHOD = "sparse(density=0.3, mask=random, pattern='encoder_layer_.*')"


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    return folder, train_file, eval_file


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """A finished 6-step sparse run (crashed after step 4 and resumed) and an uninterrupted
    one: (workdir, uninterrupted workdir, config)."""
    folder, train_file, eval_file = setup
    config = tiny_runs.tiny_config(folder, train_file, eval_file, method=METHOD, total_steps=6,
                                   checkpoint_every=2)
    whole = str(tmp_path_factory.mktemp("sparse_whole"))
    train(config, whole)

    def crash(step, state):
        if step == 5:
            raise Crash()

    broken = str(tmp_path_factory.mktemp("sparse_broken"))
    with pytest.raises(Crash):
        train(config, broken, hooks=[crash])
    train(config, broken)
    return broken, whole, config


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_trained_sparse_changes_exactly_the_k_selected_weights(setup, trained):
    folder, _, _ = setup
    workdir, _, _ = trained
    base = up.load_pretrained(folder)
    model, delta = load_delta(os.path.join(workdir, "delta.safetensors"), base)
    mask = masks_lib.SparseMask.load(os.path.join(workdir, "mask.safetensors"), base)
    assert model.method.sparse.counts == mask.counts()
    params = frozen_params(base, model)
    merged_method, merged, rest = merge_sparse(model.method, params, delta)
    assert merged_method.sparse is None and "classifier_dense" in rest
    flat_base = traverse_util.flatten_dict(params, sep="/")
    flat_merged = traverse_util.flatten_dict(merged, sep="/")
    changed = 0
    for path, before in flat_base.items():
        diff = np.asarray(flat_merged[path]) != np.asarray(before)
        selected = mask.masks.get(path, np.zeros(np.shape(before), bool))
        assert np.array_equal(diff, selected), path  # bitwise equal off the mask
        changed += int(diff.sum())
    assert changed == mask.k > 0
    # the merged weights compute what the sparse model computes
    rng = np.random.default_rng(0)
    ids, att = padded_batch(rng, 4, 10, 99, 1)
    out = model.apply({"params": params, "delta": delta}, ids, att).logits
    plain = up.build(base.config, merged_method, num_labels=2)
    out2 = plain.apply({"params": merged, "delta": rest}, ids, att).logits
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))


def test_resume_is_exact_and_optimizer_state_is_two_k(setup, trained):
    workdir, whole, config = trained
    assert _losses(workdir) == _losses(whole)
    base = up.load_pretrained(setup[0])
    a = load_delta(os.path.join(workdir, "delta.safetensors"), base)[1]
    b = load_delta(os.path.join(whole, "delta.safetensors"), base)[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # trained = k values + the head (integer positions are not trained)
    results = json.load(open(os.path.join(whole, "results.json")))
    mask = masks_lib.SparseMask.load(os.path.join(whole, "mask.safetensors"), base)
    head = sum(int(np.prod(v.shape)) for k, v in a.items() if k.startswith("classifier")
               for v in jax.tree.leaves(v))
    assert results["trained_params"] == mask.k + head


def test_save_load_round_trip_is_exact(setup, trained, tmp_path):
    base = up.load_pretrained(setup[0])
    model, delta = load_delta(os.path.join(trained[0], "delta.safetensors"), base)
    flat = traverse_util.flatten_dict(delta, sep="/")
    assert {str(v.dtype) for k, v in flat.items() if k.endswith("_sparse_index")} == {"int32"}
    path = save_delta(str(tmp_path / "again.safetensors"), model, delta, base)
    model2, delta2 = load_delta(path, base)
    assert model2.method == model.method
    flat2 = traverse_util.flatten_dict(delta2, sep="/")
    assert set(flat2) == set(flat)
    for k in flat:
        assert flat2[k].dtype == flat[k].dtype and np.array_equal(flat2[k], flat[k]), k
    # the file holds indices + values per leaf, not dense weights
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    k_total = masks_lib.SparseMask.load(os.path.join(trained[0], "mask.safetensors")).k
    assert sum(s[0] for k, s in sizes.items() if k.endswith("_sparse")) == k_total
    assert sum(s[0] for k, s in sizes.items() if k.endswith("_sparse_index")) == k_total


def test_counts_equal_k(setup):
    base = up.load_pretrained(setup[0])
    for method in ("sparse(density=0.3)", "sparse(density=0.3, select=per_leaf)",
                   "sparse(density=0.1, head_in_budget=false, mask=magnitude)"):
        mask = masks_lib.compute(base, method, num_labels=2)
        from_shapes = up.count(base.config, method, num_labels=2)  # no mask: shapes alone
        resolved = up.count(base.config, mask.attach(method), num_labels=2)
        for result in (from_shapes, resolved):
            entry = result["per_axis"]["sparse@params"]
            assert entry["trained"] == entry["stored"] == entry["paper"] == mask.k
            assert entry["index_bytes"] == result["index_bytes"] == 4 * mask.k
        if "per_leaf" in method:
            assert from_shapes["per_layer"] == resolved["per_layer"]
        head = resolved["head"]
        weights = sum(v.size for v in jax.tree.leaves(base.params))
        if "head_in_budget" in method:
            assert mask.k == round(0.1 * weights)
        elif "per_leaf" not in method:  # FISH: the head inside the budget
            assert mask.k + head == round(0.3 * (weights + head))
        # the density target is met to the rounding of k, leaf by leaf for per_leaf
        if "per_leaf" in method:
            for path, m in mask.masks.items():
                assert m.sum() == round(0.3 * m.size)


def test_masks_are_what_their_criterion_says(setup, tmp_path):
    base = up.load_pretrained(setup[0])
    flat = traverse_util.flatten_dict(base.params, sep="/")
    mag = masks_lib.compute(base, "sparse(density=0.2, select=per_leaf, mask=magnitude)")
    for path, m in mag.masks.items():
        w = np.abs(np.asarray(flat[path])).reshape(-1)
        if m.any() and not m.all():  # every kept |w| >= every dropped |w|
            assert w[m.reshape(-1)].min() >= w[~m.reshape(-1)].max(), path
    r1 = masks_lib.compute(base, "sparse(density=0.2)", num_labels=2, seed=1)
    r2 = masks_lib.compute(base, "sparse(density=0.2)", num_labels=2, seed=2)
    assert r1.k == r2.k and any(not np.array_equal(r1.masks[p], r2.masks[p]) for p in r1.masks)
    # the file round trip keeps masks and metadata
    path = r1.save(str(tmp_path / "m.safetensors"))
    back = masks_lib.SparseMask.load(path, base)
    assert back.metadata() == r1.metadata()
    assert all(np.array_equal(back.masks[p], r1.masks[p]) for p in r1.masks)
    # ties go to the lower position
    assert masks_lib.top_k(np.array([1.0, 2.0, 2.0, 2.0, 0.5]), 2).tolist() == [
        False, True, True, False, False]


def _encoded(rows, labels):
    return Encoded(kind="classification", source=Ragged.from_lists(rows), pad_id=1,
                   max_source_len=16, labels=np.asarray(labels, np.int32))


def test_fisher_equals_a_per_example_pytorch_loop(tiny_checkpoint):
    """F_i = Σ_n (∂ log p(y_n|x_n)/∂θ_i)², each example alone, dropout off: the same numbers
    from transformers' PyTorch RoBERTa (an explicit loop, zero_grad per example) and from our
    vmapped, jitted, 8-device computation (microbatches padded, filler rows included)."""
    import torch

    folder = tiny_checkpoint("roberta", classification=True, layers=1)
    base = up.load_pretrained(folder)
    model = up.build(base.config, "none", num_labels=3, pretrained_head=True)
    rng = np.random.default_rng(0)
    rows = [[0] + rng.integers(3, 99, size=int(n)).tolist() + [2]
            for n in rng.integers(3, 12, size=6)]
    labels = rng.integers(0, 3, size=6).tolist()
    ours = fisher_scores(model, base.params, {}, _encoded(rows, labels), make_mesh(),
                         batch_size=8, buckets=(16,))

    torch_model = tiny_hf_model("roberta", classification=True, layers=1)
    torch_model.eval()  # dropout off
    sums = {n: torch.zeros_like(p) for n, p in torch_model.named_parameters()}
    for row, label in zip(rows, labels):
        torch_model.zero_grad()
        logits = torch_model(torch.tensor([row])).logits
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([label]))
        loss.backward()
        for n, p in torch_model.named_parameters():
            if p.grad is not None:
                sums[n] += p.grad ** 2
    torch_scores = {_strip_body_prefix(n): v.numpy() for n, v in sums.items()}
    assert len(ours) > 10
    for path, score in ours.items():
        ref = torch_scores[hf_key(tuple(path.split("/")), False)]
        ref = ref.T if path.endswith("kernel") else ref.reshape(score.shape)
        np.testing.assert_allclose(score, ref, rtol=2e-3, atol=1e-6 * float(ref.max()) + 1e-12,
                                   err_msg=path)


def _one_step(model, params, batch, mesh, mask, *, min_size=2 ** 16, frozen_dtype=None):
    """Two train steps (past the warmup's lr 0) of `model` from its mask's init, the trees
    placed as the trainer places them (FSDP rule of `min_size`, frozen weights as
    `frozen_dtype`)."""
    from test_train import OPTIM
    from unified_petl.train import optim as optim_lib
    from unified_petl.train.sharding import shardings_of
    from unified_petl.train.step import (global_batch, init_state, make_train_step,
                                         place_frozen, split_trainable, state_shardings)

    optimizer, schedule = optim_lib.make_optimizer(OPTIM, 10)
    delta = up.init_delta(model, jax.random.key(0), params=params, masks=mask)
    trainable, frozen = split_trainable(False, params, delta)
    state = init_state(trainable, optimizer, seed=0, mesh=mesh, min_size=min_size)
    frozen = place_frozen(frozen, mesh, min_size=min_size, dtype=frozen_dtype)
    step = make_train_step(model, optimizer, mesh, schedule=schedule,
                           state_sharding=state_shardings(state),
                           frozen_sharding=shardings_of(frozen))
    for _ in range(2):
        state, metrics = step(state, frozen, global_batch(batch, mesh))
    return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def lora_sparse(setup):
    base = up.load_pretrained(setup[0])
    method = "lora(r=2) + sparse(density=0.3, mask=magnitude)"
    mask = masks_lib.compute(base, method, num_labels=2)
    model = up.build(base.config, mask.attach(method), num_labels=2)
    return model, frozen_params(base, model), mask


@pytest.mark.parametrize("fsdp", [1, 4])
def test_eight_devices_equal_one(setup, lora_sparse, fsdp):
    """8-way data parallel, and a 2 x 4 data x fsdp mesh whose FSDP rule (min_size 64) splits
    the sparse values, their indices and the frozen weights: the same two steps as 1 device."""
    from test_train import _batch

    model, params, mask = lora_sparse
    batch = _batch("roberta")
    one, m1 = _one_step(model, params, batch, make_mesh(devices=jax.devices()[:1]), mask)
    min_size = 64 if fsdp > 1 else 2 ** 16
    eight, m8 = _one_step(model, params, batch, make_mesh(fsdp=fsdp), mask, min_size=min_size)
    if fsdp > 1:  # the layout under test: some sparse values are split over the fsdp axis
        split = [k for k, v in traverse_util.flatten_dict(eight.trainable, sep="/").items()
                 if k.endswith("_sparse") and not v.sharding.is_fully_replicated]
        assert split, "no sparse leaf is split: the test does not test FSDP"
    one, eight = jax.device_get(one.trainable), jax.device_get(eight.trainable)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    flat1, flat8 = (traverse_util.flatten_dict(t, sep="/") for t in (one, eight))
    assert any(k.endswith("_sparse") for k in flat1)
    assert not any(k.endswith("_sparse_index") for k in flat1)  # never trained
    for k, v in flat1.items():
        np.testing.assert_allclose(flat8[k], v, atol=1e-5, err_msg=k)
    assert any(float(np.abs(v).max()) > 0 for k, v in flat1.items() if k.endswith("_sparse"))


@pytest.mark.parametrize("method", ["sparse(density=0.3, mask=magnitude)",
                                    "diff_gates(density=0.1)"])
def test_bf16_frozen_weights_keep_small_offsets(setup, method):
    """frozen_dtype=bfloat16 stores W in bf16; W + Δ must still be formed in fp32, as a dense
    offset is (a bf16 sum drops every offset below half a bf16 step of W, 2^-9 |W|). Reference:
    the same model on the same (bf16-rounded) weights held in fp32."""
    from unified_petl.train.sharding import cast_floating

    base = up.load_pretrained(setup[0])
    sparse_term = method.startswith("sparse")
    mask = masks_lib.compute(base, method, num_labels=2) if sparse_term else None
    model = up.build(base.config, mask.attach(method) if sparse_term else method, num_labels=2)
    params = frozen_params(base, model)
    delta = up.init_delta(model, jax.random.key(0), params=params, masks=mask)
    suffix = "_sparse" if sparse_term else "_diff"
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(delta, sep="/")
    small = {k: (1e-4 * rng.standard_normal(v.shape)).astype(np.float32)
             if k.endswith(suffix) else v for k, v in flat.items()}
    zero = {k: np.zeros_like(v) if k.endswith(suffix) else v for k, v in flat.items()}
    bf16 = cast_floating(params, jax.numpy.bfloat16)
    held = cast_floating(bf16, jax.numpy.float32)  # the same values, fp32 storage
    ids = np.array([[0, 5, 6, 7, 8, 9, 2]], np.int32)

    def logits(p, d):
        d = traverse_util.unflatten_dict(d, sep="/")
        return np.asarray(model.apply({"params": p, "delta": d}, ids).logits, np.float64)

    effect = logits(bf16, small) - logits(bf16, zero)
    reference = logits(held, small) - logits(held, zero)
    assert np.abs(reference).max() > 1e-6  # the offsets matter in fp32
    np.testing.assert_allclose(effect, reference, atol=1e-2 * np.abs(reference).max())


@pytest.mark.parametrize("text,message", [
    ("sparse(density=0)", "sparse(density=0): density must be a number in (0, 1]"),
    ("sparse(density=1.5)", "density must be a number in (0, 1]"),
    ("sparse(density=-0.01)", "density must be a number in (0, 1]"),
    ("sparse(mask=fishr)", "mask must be one of random, magnitude, fisher, file"),
    ("sparse(mask=file)", "mask=file needs path="),
    ("child_tuning(mode=X)", "mode must be one of D, F"),
    ("child_tuning(p=0)", "p must be a number in (0, 1]"),
    ("diff_pruning(density=0.01)", "diff_pruning needs steps=N"),
    ("diff_pruning(steps=5, lower=0.2)", "lower must be a number in (-inf, 0)"),
    ("sparse(select=best)", "select must be one of global, per_leaf"),
    ("fish(num_examples=0)", "num_examples must be an integer >= 1"),
    ("sparse(density=0.1, bogus=1)", "unknown argument(s) ['bogus']"),
])
def test_bad_input_is_one_line(text, message):
    with pytest.raises(up.SpecError) as e:
        up.parse_method(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_mask_for_another_base_is_refused(setup, tmp_path):
    folder, train_file, eval_file = setup
    base = up.load_pretrained(folder)
    tiny_hf_model("roberta", layers=1, seed=1).save_pretrained(str(tmp_path / "other"))
    other = up.load_pretrained(str(tmp_path / "other"))
    assert other.fingerprint != base.fingerprint
    path = masks_lib.compute(other, "sparse(density=0.3)", num_labels=2).save(
        str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointMismatch) as e:
        masks_lib.SparseMask.load(path, base)
    assert "compute a mask for this base" in str(e.value) and "\n" not in str(e.value)
    config = tiny_runs.tiny_config(folder, train_file, eval_file, total_steps=1,
                                   method=f"sparse(mask=file, path='{path}')")
    with pytest.raises(CheckpointMismatch):
        train(config, str(tmp_path / "run"))
    # a density too small for the head is one line too
    with pytest.raises(SparseError) as e:
        masks_lib.compute(base, "sparse(density=0.01)", num_labels=2)
    assert "head_in_budget=false" in str(e.value)
    # an unresolved sparse term cannot silently build a model without its Δh
    with pytest.raises(up.SpecError, match="resolve it"):
        up.build(base.config, "sparse(density=0.3)")
    model = up.build(base.config, masks_lib.compute(base, "sparse(density=0.3)").attach(
        "sparse(density=0.3)"))
    with pytest.raises(ValueError, match="pass masks="):
        up.init_delta(model, jax.random.key(0), params=base.params)


def _cli_error(capsys, argv):
    from unified_petl import cli

    capsys.readouterr()  # what came before
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unified-petl: error: "), err
    return err


def test_mask_command(setup, tmp_path, capsys):
    """`unified-petl mask` with the flags scripts rely on; bad input is one line."""
    from unified_petl import cli

    folder, train_file, eval_file = setup
    config = tiny_runs.write_config_file(str(tmp_path / "tiny.py"), folder, train_file,
                                         eval_file)
    out = str(tmp_path / "fisher.safetensors")
    cli.main(["mask", "--config", config, "--criterion", "fisher", "--density", "0.3",
              "--num-examples", "16", "--out", out])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    base = up.load_pretrained(folder)
    mask = masks_lib.SparseMask.load(out, base)
    assert (mask.criterion, mask.num_examples, mask.density, mask.k) == (
        "fisher", 16, 0.3, printed["k"])
    weights = sum(v.size for v in jax.tree.leaves(base.params))
    assert mask.head == 32 * 32 + 32 + 32 * 2 + 2  # RoBERTa's new 2-label head
    assert mask.k + mask.head == round(0.3 * (weights + mask.head))
    # the head used by the Fisher information is the one training starts from
    from unified_petl.data import get_task
    from unified_petl.train.config import load_config
    from unified_petl.train.masking import helper_model
    from unified_petl.train.setup import build_run

    cfg = load_config(config)
    cfg.method = f"sparse(mask=file, path='{out}')"
    run = build_run(cfg, base)
    head = {k: v for k, v in run.init_delta(cfg.seed).items() if k.startswith("classifier")}
    _, _, fisher_head = helper_model(cfg, base, get_task(cfg.task), run.model.method)
    for x, y in zip(jax.tree.leaves(head), jax.tree.leaves(fisher_head)):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    for argv, expected in (
            (["--criterion", "bogus", "--density", "0.3"], "invalid choice: 'bogus'"),
            (["--criterion", "random", "--density", "0"], "density=0.0 must be in (0, 1]"),
            (["--criterion", "random", "--density", "1.5"], "density=1.5 must be in (0, 1]"),
            (["--criterion", "random", "--density", "0.01"], "head_in_budget=false")):
        err = _cli_error(capsys, ["mask", "--config", config, "--out",
                                  str(tmp_path / "x.safetensors"), *argv])
        assert expected in err, err
    # a mask of another base: training with it is refused in one line
    tiny_hf_model("roberta", layers=1, seed=2).save_pretrained(str(tmp_path / "other"))
    other = up.load_pretrained(str(tmp_path / "other"))
    theirs = masks_lib.compute(other, "sparse(density=0.3)", num_labels=2).save(
        str(tmp_path / "theirs.safetensors"))
    err = _cli_error(capsys, ["train", "--config", config, "--workdir", str(tmp_path / "w"),
                              f"--config.method=sparse(mask=file, path='{theirs}')"])
    assert "compute a mask for this base" in err
