"""The jitted, sharded train and eval steps.

One `jax.jit` over a `Mesh` with axes `data` x `fsdp` (DESIGN.md decision 4): the batch is
split over both axes (every device gets its own rows); the frozen weights, the trainable tree
and the optimiser state follow the FSDP rule of unified_petl.train.sharding (split over
`fsdp` on their largest divisible dimension, small leaves replicated; with mesh.fsdp = 1,
the default, everything is replicated: plain data parallelism). XLA inserts the gradient
all-reduce and, under FSDP, each weight's all-gather and its gradient's reduce-scatter, from
the in/out shardings alone. The frozen weights are an argument of the step, never closed over (a
closed-over 400M-parameter tree would be baked into the program as constants), and the
gradient is taken with respect to the trainable tree only, so no gradient or optimiser state
ever exists for a frozen weight.

Trainable tree: Δh (the `delta` collection) for every method but "full", with frozen =
{"params": base weights, "delta": {}}; a method with head=false (the reference code's frozen
random head) moves the new head from the trainable Δh to frozen["delta"]. Integer Δh leaves
(a sparse term's fixed indices) are never trained: they go to frozen["delta"] too. For full
fine-tuning trainable = {"params": base weights, "delta": the new head (or {})}, frozen = {}
(Child-Tuning_D: {"grad_mask": its fixed gradient mask}, read by the optimiser).

Batches (numpy on the host, this host's rows; see unified_petl.data.batching):
  classification: input_ids / attention_mask [/ token_type_ids] int32 [B, L], labels int32
    [B], weight float32 [B];
  seq2seq: input_ids / attention_mask int32 [B, S], decoder_input_ids /
    decoder_attention_mask / labels int32 [B, T], weight float32 [B].
Every loss is a sum over examples (tokens for seq2seq) weighted by `weight` (and the decoder
mask) divided by the total weight of the GLOBAL batch, so gradient accumulation and any
number of devices give the same update as one device with the whole batch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unified_petl.train.sharding import (BATCH_AXES, MIN_SIZE, cast_floating, place,
                                         tree_shardings)

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "decoder_input_ids",
              "decoder_attention_mask")
MASK_STREAM = 0x43544D  # Child-Tuning_F's masks: fold_in(step key, this), apart from dropout


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. rng is raw key data (uint32 [2]) so orbax can save it."""

    step: jax.Array  # int32 []
    trainable: Any  # Δh, or {"params", "delta"} for full fine-tuning
    opt_state: Any
    rng: jax.Array  # uint32 key data; the dropout key of step s is fold_in(rng, s)


# ----------------------------------------------------------------------------- devices
def make_mesh(num_devices: Optional[int] = None, devices: Optional[Sequence] = None,
              fsdp: int = 1) -> Mesh:
    """A `data` x `fsdp` mesh over all devices of all hosts (or the first num_devices).

    fsdp: devices that split the weights between them (sharding.fsdp_spec); it must divide
    the device count, and in a multi-process run the devices of one host, so that each fsdp
    group is one host's consecutive devices (a host then holds whole weights between its
    devices, and the fast links carry the gathers). fsdp = 1: all data parallel.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    fsdp = int(fsdp)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices; "
                         f"use one of {_divisors(len(devices))} (1 = all data parallel)")
    local = jax.local_device_count()
    if fsdp > 1 and jax.process_count() > 1 and local % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the {local} devices of one host in a "
                         f"multi-process run; use one of {_divisors(local)}")
    return Mesh(np.array(devices).reshape(len(devices) // fsdp, fsdp), ("data", "fsdp"))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Rows [B, ...] split over every device of the mesh (both axes)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies of `tree` on every device of the mesh. Never aliases the input: the train step
    donates the state, which must not delete the caller's arrays (base.params for full FT)."""
    return place(tree, replicated(mesh))


def frozen_dtype_problem(full: bool, frozen_dtype: str) -> Optional[str]:
    """Why `frozen_dtype` cannot be used with this method (full fine-tuning), or None."""
    if full and frozen_dtype != "float32":
        return (f"frozen_dtype={frozen_dtype} stores frozen weights, but method 'full' trains "
                "every weight and keeps fp32 master weights; use frozen_dtype=float32 "
                "(dtype=bfloat16 for bf16 compute)")
    return None


def place_frozen(frozen: Any, mesh: Mesh, *, dtype=None, min_size: int = MIN_SIZE) -> Any:
    """The frozen tree ({"params", "delta"} or {}) on the mesh by the FSDP rule, the base
    weights (frozen["params"]) stored as `dtype` (None: as they are).

    bf16 storage halves the frozen bytes; the model upcasts where it computes in fp32 and
    LayerNorm keeps fp32 math. A frozen task head (frozen["delta"], train_head=False) stays
    fp32: it is written to Δh files with the trained Δh. The base's fingerprint is taken
    from the fp32 weights (Base.fingerprint), never from this copy."""
    if dtype is not None and frozen:
        frozen = {**frozen, "params": cast_floating(frozen["params"], jnp.dtype(dtype))}
    return place(frozen, tree_shardings(frozen, mesh, min_size))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's rows [B / process_count, ...] -> global arrays [B, ...] split over every
    device (data x fsdp)."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


# ----------------------------------------------------------------------------- trainable
def is_head(name: str) -> bool:
    """Whether a top-level `delta` entry is a new task head (RobertaModel's HeadDense)."""
    return name.startswith("classifier")


def split_trainable(full: bool, params: Any, delta: Any, *, train_head: bool = True,
                    grad_mask: Optional[dict] = None) -> tuple[Any, Any]:
    """(trainable, frozen) from the frozen base weights and the initial Δh (see the module
    docstring); train_head=False keeps a new task head frozen at its random init.
    grad_mask (full fine-tuning only): Child-Tuning_D's {'/'-joined trainable path: bool}."""
    if full:
        return {"params": params, "delta": delta}, ({} if grad_mask is None
                                                      else {"grad_mask": grad_mask})
    if grad_mask is not None:
        raise ValueError("a gradient mask belongs to full fine-tuning (Child-Tuning)")
    flat = traverse_util.flatten_dict(delta) if delta else {}
    keep = {p: not _is_integer(v) and (train_head or not is_head(p[0]))
            for p, v in flat.items()}
    if all(keep.values()):
        return delta, {"params": params, "delta": {}}
    trainable = {p: v for p, v in flat.items() if keep[p]}
    fixed = {p: v for p, v in flat.items() if not keep[p]}
    return (traverse_util.unflatten_dict(trainable) if trainable else {},
            {"params": params, "delta": traverse_util.unflatten_dict(fixed)})


def _is_integer(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.integer)


def variables(full: bool, trainable: Any, frozen: Any) -> dict[str, Any]:
    """The model's variable dict from the two trees (the inverse of split_trainable)."""
    if full:
        return {"params": trainable["params"], "delta": trainable["delta"]}
    return {"params": frozen["params"], "delta": merge_trees(frozen["delta"], trainable)}


def merge_trees(a: Any, b: Any) -> Any:
    """Nested dicts a and b merged key by key (b's leaves win; disjoint in practice)."""
    if not a:
        return b
    if not b:
        return a
    out = dict(a)
    for key, value in b.items():
        out[key] = (merge_trees(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out


def init_state(trainable: Any, optimizer: optax.GradientTransformation, seed: int,
               mesh: Mesh, *, min_size: int = MIN_SIZE) -> TrainState:
    """The step-0 state on the mesh: trainable tree and optimiser state by the FSDP rule
    (replicated when mesh.fsdp = 1), step and RNG replicated. The dropout stream is
    independent of the Δh init stream."""
    trainable = place(trainable, tree_shardings(trainable, mesh, min_size))
    opt_shapes = jax.eval_shape(optimizer.init, trainable)
    opt_state = jax.jit(optimizer.init, out_shardings=tree_shardings(opt_shapes, mesh, min_size)
                        )(trainable)
    rng = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
    return TrainState(step=replicate(jnp.zeros((), jnp.int32), mesh), trainable=trainable,
                      opt_state=opt_state, rng=replicate(rng, mesh))


def state_shardings(state: TrainState) -> TrainState:
    """The shardings of a placed state (what the train step takes and gives back)."""
    return jax.tree.map(lambda x: x.sharding, state)


# ----------------------------------------------------------------------------- losses
def token_weights(batch: dict[str, jax.Array], seq2seq: bool) -> jax.Array:
    """What each loss term counts for: [B] (classification) or [B, T] (seq2seq tokens)."""
    weight = batch["weight"].astype(jnp.float32)
    if seq2seq:
        return batch["decoder_attention_mask"].astype(jnp.float32) * weight[:, None]
    return weight


def smoothed_nll(logits: jax.Array, labels: jax.Array, epsilon: float) -> tuple[jax.Array,
                                                                              jax.Array]:
    """Per-position ((1-ε)·NLL + ε·mean_vocab(-log p), NLL), both [B] or [B, T].

    The label-smoothed loss of the reference code (transformers' LabelSmoother). logits
    [..., V] are upcast to fp32 so a bf16 model still gets an fp32 softmax.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if epsilon == 0.0:
        return nll, nll
    return (1.0 - epsilon) * nll - epsilon * logp.mean(axis=-1), nll


def loss_sums(model, variables_: dict, batch: dict, rng: Optional[jax.Array], *,
              label_smoothing: float = 0.0, deterministic: bool = False):
    """(Σ w·loss, Σ w·nll, logits) over one (micro)batch; w from `token_weights`."""
    seq2seq = model.cfg.seq2seq
    inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
    rngs = {} if rng is None else {"dropout": rng}
    out = model.apply(variables_, **inputs, deterministic=deterministic, rngs=rngs)
    loss, nll = smoothed_nll(out.logits, batch["labels"], label_smoothing)
    w = token_weights(batch, seq2seq)
    return (loss * w).sum(), (nll * w).sum(), out.logits


def make_grad_fn(model, *, full: bool, label_smoothing: float = 0.0):
    """(trainable, frozen, batch, rng, denom) -> ((Σ loss / denom, Σ nll), grads).

    grads has exactly the structure of `trainable`: the frozen tree is not differentiated.
    """
    def objective(trainable, frozen, batch, rng, denom):
        total, nll, _ = loss_sums(model, variables(full, trainable, frozen), batch, rng,
                                  label_smoothing=label_smoothing)
        return total / denom, nll

    return jax.value_and_grad(objective, has_aux=True)


# ----------------------------------------------------------------------------- train step
def make_train_step(model, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                    schedule: Optional[Callable] = None, grad_accum: int = 1,
                    label_smoothing: float = 0.0, state_sharding: Any = None,
                    frozen_sharding: Any = None) -> Callable:
    """A jitted step(state, frozen, batch) -> (state, metrics).

    state_sharding / frozen_sharding: where the state and the frozen tree live (a tree of
    shardings, e.g. `state_shardings(state)` and `sharding.shardings_of(frozen)`, or one
    sharding for every leaf); None: replicated. The new state comes back with the same
    shardings, so the next call neither moves nor recompiles.
    batch: global arrays (see `global_batch`), B rows split over every device; with grad_accum = A
    the B rows are split into A microbatches of B / A rows (each still spread over every
    device) whose gradients are summed in a lax.scan before one optimiser update.
    The state argument is donated: its buffers are reused for the new state.
    metrics (replicated fp32 scalars): loss (label-smoothed), nll, grad_norm, lr, weight
    (tokens or examples that counted), finite (1 if every updated Δh value is finite);
    penalty (diff pruning: λ × expected L0, added to the objective once per step).
    Child-Tuning's gradient mask gets its RNG (F: fold_in of the step's key) and fixed mask
    (D: frozen["grad_mask"]) as optax extra arguments.
    """
    full = bool(model.method.full)
    seq2seq = model.cfg.seq2seq
    grad_fn = make_grad_fn(model, full=full, label_smoothing=label_smoothing)
    micro_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
    diff_term = model.method.diff
    child = model.method.grad_mask

    def step(state: TrainState, frozen: Any, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        weight = token_weights(batch, seq2seq).sum()
        denom = jnp.maximum(weight, 1.0)  # an all-filler batch: zero loss, zero gradient
        if grad_accum == 1:
            (loss, nll), grads = grad_fn(state.trainable, frozen, batch, rng, denom)
        else:
            # Row i goes to microbatch i % A: every device keeps its rows (no reshuffle).
            def split(x):
                x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, micro_sharding)

            micro = jax.tree.map(split, batch)

            def body(carry, xs):
                mb, j = xs
                (l, n), g = grad_fn(state.trainable, frozen, mb, jax.random.fold_in(rng, j),
                                    denom)
                return jax.tree.map(jnp.add, carry, (l, n, g)), None

            zeros = (jnp.zeros(()), jnp.zeros(()),
                     jax.tree.map(jnp.zeros_like, state.trainable))
            (loss, nll, grads), _ = jax.lax.scan(body, zeros,
                                                 (micro, jnp.arange(grad_accum)))
        extra_metrics, extra_args = {}, {}
        if diff_term is not None:  # the expected-L0 penalty, once per step
            from unified_petl.delta.diff_pruning import penalty

            value, penalty_grads = jax.value_and_grad(
                lambda t: penalty(diff_term, t))(state.trainable)
            grads = jax.tree.map(jnp.add, grads, penalty_grads)
            extra_metrics["penalty"] = value
        if child is not None:
            extra_args["mask_key"] = jax.random.fold_in(rng, MASK_STREAM)
            if "grad_mask" in frozen:
                extra_args["grad_mask"] = frozen["grad_mask"]
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable,
                                              **extra_args)
        trainable = optax.apply_updates(state.trainable, updates)
        # A finite loss can still produce an inf/NaN update (overflow); the trainer checks
        # this flag before every save so that no checkpoint ever holds a broken Δh.
        finite = jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]
                                   or [jnp.bool_(True)]))
        metrics = {"loss": loss, "nll": nll / denom,  # the aux nll is a sum
                   "finite": finite,
                   "grad_norm": optax.tree.norm(grads), "weight": weight,
                   "lr": (schedule(state.step) if schedule is not None else jnp.zeros(())),
                   **extra_metrics}
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return state.replace(step=state.step + 1, trainable=trainable,
                             opt_state=opt_state), metrics

    repl, data = replicated(mesh), data_sharded(mesh)
    state_sharding = repl if state_sharding is None else state_sharding
    frozen_sharding = repl if frozen_sharding is None else frozen_sharding
    return jax.jit(step, in_shardings=(state_sharding, frozen_sharding, data),
                   out_shardings=(state_sharding, repl), donate_argnums=(0,))


# ----------------------------------------------------------------------------- eval step
def make_eval_step(model, mesh: Mesh, *, trainable_sharding: Any = None,
                   frozen_sharding: Any = None) -> Callable:
    """A jitted eval(trainable, frozen, batch) -> outputs, no dropout.

    trainable_sharding / frozen_sharding: as make_train_step's (None: replicated).

    outputs: nll_sum = Σ w·NLL, uniform_sum = Σ w·mean_vocab(-log p), weight = Σ w
    (replicated scalars; w from `token_weights`) and, for classification, pred / labels /
    weight_rows int32|float32 [B] split like the batch (gather with `gather`).
    The label-smoothed eval loss of any ε is ((1-ε)·nll_sum + ε·uniform_sum) / weight summed
    over the eval set: the reference code selects en-ro checkpoints on it (its
    Seq2SeqTrainer.prediction_step applies the LabelSmoother to the eval batches,
    trainer_seq2seq.py about lines 180-185).
    """
    full = bool(model.method.full)
    seq2seq = model.cfg.seq2seq

    def evaluate(trainable, frozen, batch):
        # ε = 1 makes smoothed_nll's first output the uniform term alone: one log-softmax
        # gives both sums.
        uniform, nll, logits = loss_sums(model, variables(full, trainable, frozen), batch,
                                         None, label_smoothing=1.0, deterministic=True)
        out = {"nll_sum": nll, "uniform_sum": uniform,
               "weight": token_weights(batch, seq2seq).sum()}
        if not seq2seq:
            out.update(pred=jnp.argmax(logits, axis=-1).astype(jnp.int32),
                       labels=batch["labels"], weight_rows=batch["weight"])
        return out

    repl, data = replicated(mesh), data_sharded(mesh)
    out_shardings = {"nll_sum": repl, "uniform_sum": repl, "weight": repl}
    if not seq2seq:
        out_shardings.update(pred=data, labels=data, weight_rows=data)
    in_shardings = (repl if trainable_sharding is None else trainable_sharding,
                    repl if frozen_sharding is None else frozen_sharding, data)
    return jax.jit(evaluate, in_shardings=in_shardings, out_shardings=out_shardings)


def gather(x: jax.Array) -> np.ndarray:
    """A global array as numpy on every host (an all-gather across hosts when there are many)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
