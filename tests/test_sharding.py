"""FSDP, bf16 frozen weights and per-layer remat: same numbers as the plain run, less memory.

8 simulated CPU devices (conftest). MIN_SIZE=256 so that the tiny models' matrices are really
split while their biases and LayerNorms stay replicated (the default, 2**16 values, would
leave every tiny leaf replicated).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

import unified_petl as up
from unified_petl.build import shape_tree
from unified_petl.train import loop, optim as optim_lib, train
from unified_petl.train.checkpoint import Checkpointer, load_delta
from unified_petl.train.config import ConfigError, check_config, with_defaults
from unified_petl.train.sharding import cast_floating, device_bytes, fsdp_spec, shardings_of
from unified_petl.train.step import (global_batch, init_state, make_grad_fn, make_mesh,
                                     make_train_step, place_frozen, split_trainable,
                                     state_shardings)
from unified_petl.train.writer import read_metrics

import tiny_runs
from test_train import OPTIM, _batch, _no_dropout

MIN_SIZE = 256


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """kind -> (folder, Base): one-layer tiny RoBERTa and BART with tokenizers (made once)."""
    tiny_runs.enable_compile_cache(tmp_path_factory)
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = tiny_runs.model_folder(tmp_path_factory, kind)
            cache[kind] = (folder, up.load_pretrained(folder))
        return cache[kind]

    return get


# ----------------------------------------------------------------------------- the rule
def test_fsdp_rule_splits_the_largest_divisible_dimension():
    assert fsdp_spec((1024, 4096), 8) == P(None, "fsdp")
    assert fsdp_spec((4096, 1024), 8) == P("fsdp")
    assert fsdp_spec((1024, 1024), 8) == P("fsdp")  # the first of equals
    assert fsdp_spec((50265, 1024), 8) == P(None, "fsdp")  # bart's vocabulary: 50265 % 8 != 0
    assert fsdp_spec((12, 1024, 64), 8) == P(None, "fsdp")
    assert fsdp_spec((4096,), 8) == P()  # below min_size: replicated
    assert fsdp_spec((4096,), 8, min_size=0) == P("fsdp")
    assert fsdp_spec((99, 37), 8, min_size=0) == P()  # no dimension divides
    assert fsdp_spec((), 8, min_size=0) == P()
    assert fsdp_spec((4, 1024), 8, min_size=0) == P(None, "fsdp")
    assert fsdp_spec((1024, 1024), 1) == P()  # fsdp = 1: data parallel


def test_bad_fsdp_is_one_line():
    with pytest.raises(ValueError, match=r"^mesh.fsdp=3 must be >= 1 and divide the 8 devices; "
                                         r"use one of \[1, 2, 4, 8\]"):
        make_mesh(fsdp=3)
    config = with_defaults(tiny_runs.tiny_config("b", "t", "e"))
    config.num_devices, config.mesh.fsdp = 4, 8
    with pytest.raises(ValueError, match="mesh.fsdp=8 must be >= 1 and divide the 4 devices"):
        loop._setup_devices(config)
    for key, value, message in (("mesh.fsdp", 0, "mesh.fsdp=0 must be >= 1"),
                                ("remat", "dots", "remat='dots': use one of none, full"),
                                ("frozen_dtype", "float16", "frozen_dtype='float16': use")):
        bad = with_defaults(tiny_runs.tiny_config("b", "t", "e"))
        group, _, name = key.rpartition(".")
        (bad[group] if group else bad)[name] = value
        with pytest.raises(ConfigError, match=message):
            check_config(bad)


# ----------------------------------------------------------------------------- FSDP = replicated
def _steps(model, params, batch, mesh, *, grad_accum=1, frozen_dtype=None, steps=2):
    """Two train steps on `mesh` (MIN_SIZE) -> dict: trainable and metrics (on the host),
    state and frozen (on the mesh), layout (the state's shardings), bytes of the trained tree,
    the optimiser state and the frozen tree on one device, and the compiled step."""
    optimizer, schedule = optim_lib.make_optimizer(OPTIM, 10)
    delta = up.init_delta(model, jax.random.key(0), params=params)
    trainable, frozen = split_trainable(model.method.full, params, delta)
    state = init_state(trainable, optimizer, seed=0, mesh=mesh, min_size=MIN_SIZE)
    frozen = place_frozen(frozen, mesh, min_size=MIN_SIZE, dtype=frozen_dtype)
    step = make_train_step(model, optimizer, mesh, schedule=schedule, grad_accum=grad_accum,
                           state_sharding=state_shardings(state),
                           frozen_sharding=shardings_of(frozen))
    placed = global_batch(batch, mesh)
    out = {"compiled": step.lower(state, frozen, placed).compile(),
           "layout": state_shardings(state), "trained_bytes": device_bytes(state.trainable),
           "opt_bytes": device_bytes(state.opt_state), "frozen_bytes": device_bytes(frozen)}
    for _ in range(steps):  # past warmup step 0 (lr 0)
        state, metrics = step(state, frozen, placed)
    assert state_shardings(state) == out["layout"]  # given back as it was taken: no moves
    out.update(trainable=jax.device_get(state.trainable), metrics=jax.device_get(metrics),
               state=state, frozen=frozen)
    return out


def _assert_close(a, b, rtol=1e-5, atol=1e-8):
    """Relative `rtol` per leaf: |x - y| <= rtol |x| + atol sqrt(size) (Euclidean norms). The
    atol floor is for leaves whose gradient is zero in exact arithmetic (a key bias: softmax
    ignores it), which Adam turns into updates of rounding noise, ~1e-10."""
    flat_b = traverse_util.flatten_dict(b)
    for path, x in traverse_util.flatten_dict(a).items():
        x, y = np.asarray(x, np.float64), np.asarray(flat_b[path], np.float64)
        bound = rtol * np.linalg.norm(x) + atol * np.sqrt(x.size)
        assert np.linalg.norm(x - y) <= bound, "/".join(path)


def _split(shardings) -> list:
    return [s.spec for s in jax.tree.leaves(shardings) if "fsdp" in str(s.spec)]


@pytest.mark.parametrize("kind, method, grad_accum", [("bart", "mam(l=3, r=4, s=2)", 1),
                                                     ("roberta", "full", 2)])
def test_fsdp8_equals_replicated(bases, kind, method, grad_accum):
    """FSDP over 8 devices = one device holding everything (loss, updated Δh or weights,
    relative 1e-5; MAM with dropout on: the same masks); the weights, the trained tree and
    the optimiser state are really split, and XLA gathers them (all-gather in the step).
    (8-way data parallel = 1 device: test_train.)"""
    _, base = bases(kind)
    config = base.config if kind == "bart" else _no_dropout(base.config)
    model = up.build(config, method, **({"num_labels": 2} if kind == "roberta" else {}))
    batch = _batch(kind)
    one = _steps(model, base.params, batch, make_mesh(devices=jax.devices()[:1]),
                 grad_accum=grad_accum)
    fsdp = _steps(model, base.params, batch, make_mesh(fsdp=8), grad_accum=grad_accum)

    np.testing.assert_allclose(fsdp["metrics"]["loss"], one["metrics"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(fsdp["metrics"]["grad_norm"], one["metrics"]["grad_norm"],
                               rtol=1e-5)
    _assert_close(one["trainable"], fsdp["trainable"])
    start = up.init_delta(model, jax.random.key(0), params=base.params)
    if model.method.full:
        start = {"params": base.params, "delta": start}
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(one["trainable"]),
                                                      jax.tree.leaves(start)))
    # really split: matrices of the trained tree and both Adam moments of each split leaf
    # (biases and LayerNorms, below MIN_SIZE, stay whole); the frozen base of a PETL method
    layout = fsdp["layout"]
    split, whole = _split(layout.trainable), jax.tree.leaves(layout.trainable)
    assert split and len(split) < len(whole)
    assert len(_split(layout.opt_state)) == 2 * len(split)
    assert fsdp["trained_bytes"] < one["trained_bytes"] / 4
    assert fsdp["opt_bytes"] < one["opt_bytes"] / 4
    if not model.method.full:
        assert _split(shardings_of(fsdp["frozen"]))
        assert fsdp["frozen_bytes"] < one["frozen_bytes"] / 4
    assert "all-gather" in fsdp["compiled"].as_text()


# ----------------------------------------------------------------------------- remat
def _remats(jaxpr) -> int:
    return str(jaxpr).count("prevent_cse=")


def test_remat_same_loss_and_gradients(bases):
    """Per-layer remat: the same parameter paths (the plain model's Δh and base trees apply
    as they are), the same loss and gradients as without (dropout on: the same masks), and
    every layer really rematerialised. (RoBERTa's layers run under remat in the trainer test
    below.)"""
    _, base = bases("bart")
    method = "mam(l=3, r=4, s=2)"
    batch = {k: jnp.asarray(v) for k, v in _batch("bart").items()}
    plain = up.build(base.config, method)
    delta = up.init_delta(plain, jax.random.key(0), params=base.params)
    args = (delta, {"params": base.params, "delta": {}}, batch,
            jax.random.key(3, impl="rbg"), jnp.float32(50.0))  # rbg: compiles faster on CPU
    assert _remats(jax.make_jaxpr(make_grad_fn(plain, full=False))(*args)) == 0
    (loss, nll), grads = jax.jit(make_grad_fn(plain, full=False))(*args)
    model = up.build(base.config, method, remat="full")
    assert jax.tree.structure(shape_tree(model, None)) == jax.tree.structure(
        shape_tree(plain, None))
    grad_fn = make_grad_fn(model, full=False)
    assert _remats(jax.make_jaxpr(grad_fn)(*args)) == 2  # encoder layer, decoder layer
    (loss_r, nll_r), grads_r = jax.jit(grad_fn)(*args)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    np.testing.assert_allclose(nll_r, nll, rtol=1e-6)
    _assert_close(jax.device_get(grads), jax.device_get(grads_r), rtol=1e-6)
    named = up.build(base.config, method, remat="dots_with_no_batch_dims_saveable")
    assert "DotsSaveable(only_if_no_batch_dims=True)" in str(
        jax.make_jaxpr(make_grad_fn(named, full=False))(*args))
    with pytest.raises(ValueError, match="remat='dots': use one of none, full"):
        up.build(base.config, method, remat="dots")


# ----------------------------------------------------------------------------- bf16 frozen
def test_bf16_frozen_equals_fp32_on_rounded_weights(bases):
    """bf16 storage of the frozen base computes exactly what fp32 weights rounded to bf16
    compute (the model upcasts; LayerNorm math in fp32); Δh, gradients and Adam state stay
    fp32, and the stored bytes halve."""
    _, base = bases("bart")
    model = up.build(base.config, "mam(l=3, r=4, s=2)")
    mesh = make_mesh(devices=jax.devices()[:1])
    frozen = place_frozen({"params": base.params, "delta": {}}, mesh, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(frozen["params"])} == {jnp.dtype(jnp.bfloat16)}
    rounded = {"params": cast_floating(frozen["params"], jnp.float32), "delta": {}}
    assert device_bytes(frozen) * 2 == device_bytes(rounded)

    delta = up.init_delta(model, jax.random.key(0), params=base.params)
    batch = {k: jnp.asarray(v) for k, v in _batch("bart").items()}
    rest = (batch, jax.random.key(3, impl="rbg"), jnp.float32(50.0))
    grad_fn = make_grad_fn(model, full=False)
    (loss, _), grads = jax.jit(grad_fn)(delta, frozen, *rest)
    (loss_ref, _), grads_ref = jax.jit(grad_fn)(delta, rounded, *rest)
    (loss_fp32, _), _ = jax.jit(grad_fn)(delta, {"params": base.params, "delta": {}}, *rest)
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    _assert_close(jax.device_get(grads_ref), jax.device_get(grads), rtol=1e-6)
    assert abs(loss_fp32 - loss) > 1e-6  # the rounding is really there

    optimizer, schedule = optim_lib.make_optimizer(OPTIM, 10)
    state = init_state(delta, optimizer, 0, mesh)
    step = make_train_step(model, optimizer, mesh, schedule=schedule)
    new, _ = jax.eval_shape(step, state, frozen, global_batch(_batch("bart"), mesh))
    assert {x.dtype for x in jax.tree.leaves(new.trainable)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(new.opt_state) if x.ndim} == {
        jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------- the trainer
def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


class Crash(Exception):
    pass


def test_resume_under_fsdp_with_bf16_frozen_and_remat_is_exact(bases, tmp_path):
    """The trainer on an fsdp=8 mesh (split Δh, Adam state and bf16 frozen base, remat): a
    crashed run resumes onto the same shardings and repeats the uninterrupted run exactly; the
    Δh file keeps the fp32 checkpoint's fingerprint."""
    folder, _ = bases("roberta")
    train_file, eval_file = tiny_runs.write_data(str(tmp_path), "sst2")
    config = tiny_runs.tiny_config(folder, train_file, eval_file, method="mam(l=2, r=4, "
                                   "hidden=8)", total_steps=5, checkpoint_every=2,
                                   num_devices=8, frozen_dtype="bfloat16", remat="full")
    config.mesh.fsdp, config.mesh.fsdp_min_size = 8, MIN_SIZE
    whole = str(tmp_path / "whole")
    train(config, whole)

    def crash_after_3(step, state):
        if step == 3:
            assert _split(state_shardings(state).trainable)  # Δh and Adam state split
            raise Crash()

    broken = str(tmp_path / "broken")
    with pytest.raises(Crash):
        train(config, broken, hooks=[crash_after_3])
    assert Checkpointer(os.path.join(broken, "checkpoints")).latest_step() == 2
    train(config, broken)
    assert _losses(broken) == _losses(whole) and sorted(_losses(whole)) == [1, 2, 3, 4, 5]

    fp32_base = up.load_pretrained(folder)  # the fingerprint of the fp32 weights
    a = load_delta(os.path.join(whole, "delta.safetensors"), fp32_base)[1]
    b = load_delta(os.path.join(broken, "delta.safetensors"), fp32_base)[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == jnp.float32 and np.array_equal(np.asarray(x), np.asarray(y))
    results = json.load(open(os.path.join(broken, "results.json")))
    assert results["step"] == 5 and "accuracy" in results["eval"]


def test_full_finetuning_refuses_bf16_frozen_storage(bases, tmp_path):
    folder, _ = bases("roberta")
    train_file, eval_file = tiny_runs.write_data(str(tmp_path), "sst2")
    config = tiny_runs.tiny_config(folder, train_file, eval_file, method="full",
                                   frozen_dtype="bfloat16")
    with pytest.raises(ConfigError, match="^frozen_dtype=bfloat16 stores frozen weights, but "
                                          "method 'full' trains every weight"):
        train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")


def _eval_cli(workdir, *overrides) -> tuple[dict, list]:
    """`unified-petl eval --split validation` of `workdir` (its own config, `overrides`):
    (scores, predicted texts in split order)."""
    from unified_petl import cli

    cli.main(["eval", "--workdir", workdir, "--split", "validation", *overrides])
    results = json.load(open(os.path.join(workdir, "eval_results_validation.json")))
    with open(results["predictions"]) as f:
        return results["eval"], [json.loads(line)["output"] for line in f]


def test_fsdp_bf16_seq2seq_run_decodes_as_one_device(tmp_path_factory, tmp_path):
    """A seq2seq run on an fsdp=8 mesh (split Δh and bf16 frozen base; remat has its own
    tests above, and would only slow this one): its evaluation during training decodes
    (eval.generate, beam search split over the 8 devices); `unified-petl eval` on that mesh
    gives the same scores; and evaluated on ONE device (the same checkpoint, the same bf16
    weights, nothing split) the beam search returns the same texts, example for example, and
    the same scores."""
    from test_multiprocess import _source_dependent_bart

    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = _source_dependent_bart(tmp_path_factory)
    train_file, eval_file = tiny_runs.write_data(str(tmp_path), "xsum")
    config = tiny_runs.tiny_config(folder, train_file, eval_file, task="xsum",
                                   method="mam(l=2, r=4, hidden=8)", total_steps=2,
                                   checkpoint_every=2, num_devices=8, frozen_dtype="bfloat16")
    config.mesh.fsdp, config.mesh.fsdp_min_size = 8, MIN_SIZE
    config.eval.generate = True
    config.generate.num_beams, config.generate.max_length = 2, 8
    config.generate.min_length = 3
    workdir = str(tmp_path / "run")
    train(config, workdir)
    during = json.load(open(os.path.join(workdir, "results.json")))["eval"]
    assert "rouge2" in during  # decoded during training

    eight, eight_texts = _eval_cli(workdir)
    one, one_texts = _eval_cli(workdir, "--config.num_devices=1", "--config.mesh.fsdp=1")
    assert one_texts == eight_texts and len(set(eight_texts)) > 8  # source-dependent outputs
    for key, value in one.items():
        np.testing.assert_allclose(eight[key], value, rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(during[key], value, rtol=1e-5, err_msg=key)
