"""The train step: data parallel = one device, only Δh changes, the paper's optimiser."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

import unified_petl as up
from unified_petl.train import optim as optim_lib
from unified_petl.train.step import (global_batch, init_state, make_grad_fn, make_mesh,
                                     make_train_step, replicate, smoothed_nll, split_trainable)

import tiny_runs
from conftest import padded_batch

OPTIM = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=2, weight_decay=0.1,
                                       max_grad_norm=1.0, b2=0.98, eps=1e-6))


def _batch(kind, seed=0, rows=16):
    """A host batch of `rows` rows for the tiny models (vocab 99, pad 1)."""
    rng = np.random.default_rng(seed)
    ids, mask = padded_batch(rng, rows, 12, 99, 1)
    weight = np.ones(rows, np.float32)
    weight[-3:] = 0.0  # filler rows must not count
    if kind == "roberta":
        return {"input_ids": ids, "attention_mask": mask, "weight": weight,
                "labels": rng.integers(0, 2, rows).astype(np.int32)}
    dec, dmask = padded_batch(rng, rows, 8, 99, 1)
    labels = np.where(dmask > 0, rng.integers(3, 99, dec.shape), 1).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
            "decoder_attention_mask": dmask * (weight[:, None] > 0), "labels": labels,
            "weight": weight}


def _one_step(model, params, batch, mesh, *, grad_accum=1, label_smoothing=0.0):
    optimizer, schedule = optim_lib.make_optimizer(OPTIM, 10)
    delta = up.init_delta(model, jax.random.key(0), params=params)
    trainable, frozen = split_trainable(model.method.full, params, delta)
    state = init_state(trainable, optimizer, seed=0, mesh=mesh)
    step = make_train_step(model, optimizer, mesh, schedule=schedule, grad_accum=grad_accum,
                           label_smoothing=label_smoothing)
    frozen = replicate(frozen, mesh)
    state, metrics = step(state, frozen, global_batch(batch, mesh))
    state, metrics = step(state, frozen, global_batch(batch, mesh))  # past warmup step 0 (lr 0)
    return jax.device_get(state.trainable), jax.device_get(metrics)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """One-layer tiny RoBERTa and BART (loaded lazily, once per module)."""
    tiny_runs.enable_compile_cache(tmp_path_factory)  # init_delta programs repeat
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = up.load_pretrained(tiny_runs.model_folder(tmp_path_factory, kind))
        return cache[kind]

    return get


def _no_dropout(config):
    config = config.__class__.from_dict(config.to_dict())
    for key in ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    return config


def test_eight_devices_equal_one_with_dropout(bases):
    """The same dropout masks and the same update, whatever the number of devices."""
    assert len(jax.devices()) == 8, "conftest sets 8 simulated CPU devices"
    base = bases("roberta")
    model = up.build(base.config, "mam(l=3, r=4, s=2)", num_labels=2)
    batch = _batch("roberta")
    one, m1 = _one_step(model, base.params, batch, make_mesh(devices=jax.devices()[:1]))
    eight, m8 = _one_step(model, base.params, batch, make_mesh())
    _assert_same(one, m1, eight, m8)
    start = up.init_delta(model, jax.random.key(0), params=base.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one),
                                                         jax.tree.leaves(start)))


def test_eight_devices_with_accumulation_equal_one_big_batch(bases):
    """8 devices x 2 microbatches (label smoothing on) = 1 device with the whole batch.
    Microbatches draw their own dropout keys, so this comparison runs without dropout."""
    base = bases("bart")
    model = up.build(_no_dropout(base.config), "lora(r=4)")
    batch = _batch("bart")
    one, m1 = _one_step(model, base.params, batch, make_mesh(devices=jax.devices()[:1]),
                        label_smoothing=0.1)
    eight, m8 = _one_step(model, base.params, batch, make_mesh(), grad_accum=2,
                          label_smoothing=0.1)
    _assert_same(one, m1, eight, m8)


def _assert_same(one, m1, eight, m8):
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5, atol=1e-5)
    assert m1["lr"] > 0
    flat8 = traverse_util.flatten_dict(eight)
    for path, a in traverse_util.flatten_dict(one).items():
        np.testing.assert_allclose(flat8[path], a, atol=1e-5, err_msg="/".join(path))


def test_only_delta_changes(bases):
    base = bases("roberta")
    before = jax.tree.map(np.array, base.params)
    model = up.build(base.config, "bitfit", num_labels=2)
    mesh = make_mesh(devices=jax.devices()[:2])
    trained, _ = _one_step(model, base.params, _batch("roberta"), mesh)
    # the frozen tree is bitwise unchanged, and still usable (it was not donated)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(base.params)):
        assert np.array_equal(a, np.asarray(b))
    # the gradient exists for Δh only: its tree is exactly the Δh tree (shapes only: no
    # compile needed to see which tree value_and_grad differentiates)
    delta = up.init_delta(model, jax.random.key(0), params=base.params)
    trainable, frozen = split_trainable(False, base.params, delta)
    _, grads = jax.eval_shape(make_grad_fn(model, full=False), trainable, frozen,
                              _batch("roberta"), jax.random.key(1), jnp.float32(1.0))
    assert jax.tree.structure(grads) == jax.tree.structure(delta)
    assert jax.tree.structure(trained) == jax.tree.structure(delta)
    flat = traverse_util.flatten_dict(grads)
    # BitFit: the bias offsets and the new head, nothing else
    assert flat and all(path[-1] == "bias" or path[0].startswith("classifier") for path in flat)


def test_full_finetuning_trains_params(bases):
    base = bases("roberta")
    before = jax.tree.map(np.array, base.params)
    model = up.build(base.config, "full", num_labels=2)
    trained, _ = _one_step(model, base.params, _batch("roberta"),
                           make_mesh(devices=jax.devices()[:1]))
    assert set(trained) == {"params", "delta"}
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                      jax.tree.leaves(trained["params"]))]
    assert sum(moved) > len(moved) // 2
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(base.params)):
        assert np.array_equal(a, np.asarray(b))  # donation did not eat the caller's weights


def test_label_smoothing_formula():
    logits = jnp.array([[2.0, 0.0, -1.0, 0.5]])
    labels = jnp.array([0])
    loss, nll = smoothed_nll(logits, labels, 0.1)
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(nll, -logp[:, 0], rtol=1e-6)
    np.testing.assert_allclose(loss, 0.9 * -logp[:, 0] + 0.1 * -logp.mean(-1), rtol=1e-6)


def test_schedule_and_decay_mask():
    lr = optim_lib.schedule(ml_collections.ConfigDict(dict(lr=1.0, warmup_ratio=0.1)), 100)
    assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(1.0)
    assert float(lr(55)) == pytest.approx(0.5) and float(lr(100)) == pytest.approx(0.0)
    no_warm = optim_lib.schedule(ml_collections.ConfigDict(dict(lr=5e-5)), 10)
    assert float(no_warm(0)) == pytest.approx(5e-5)
    mask = optim_lib.decay_mask({"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3),
                                 "scale": jnp.ones(())})
    assert mask == {"kernel": True, "bias": False, "scale": False}
    # weight decay touches matrices only
    opt, _ = optim_lib.make_optimizer(ml_collections.ConfigDict(dict(
        lr=0.1, weight_decay=0.5, max_grad_norm=0.0)), 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)
    assert float(jnp.abs(updates["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["kernel"]).max()) > 0.0


def test_bad_optim_settings_are_one_line():
    with pytest.raises(ValueError, match="unknown optim key"):
        optim_lib.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-4, betas=1)), 10)
    with pytest.raises(ValueError, match="warmup"):
        optim_lib.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=50)), 10)


def test_bf16_compute_keeps_fp32_state(bases):
    base = bases("roberta")
    model = up.build(base.config, "lora(r=4)", num_labels=2, dtype=jnp.bfloat16)
    optimizer, schedule = optim_lib.make_optimizer(OPTIM, 10)
    mesh = make_mesh(devices=jax.devices()[:1])
    delta = up.init_delta(model, jax.random.key(0), params=base.params)
    trainable, frozen = split_trainable(False, base.params, delta)
    state = init_state(trainable, optimizer, 0, mesh)
    step = make_train_step(model, optimizer, mesh, schedule=schedule)
    # dtypes are decided at trace time: eval_shape shows them without compiling
    new, metrics = jax.eval_shape(step, state, replicate(frozen, mesh),
                                  global_batch(_batch("roberta"), mesh))
    assert metrics["loss"].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(new.trainable)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(new.opt_state)
            if x.ndim} == {jnp.dtype("float32")}
    # and the model really computes in bf16
    out = jax.eval_shape(lambda d: model.apply({"params": base.params, "delta": d},
                                               input_ids=jnp.ones((2, 4), jnp.int32)), delta)
    assert out.last_hidden_state.dtype == jnp.bfloat16
