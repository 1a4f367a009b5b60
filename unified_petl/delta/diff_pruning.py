"""Diff pruning's gated Δh (Guo, Rush, Kim, ACL 2021): Δ = z ⊙ w with hard-concrete gates.

Stage 1 of `diff_pruning(density=...)` trains, for every candidate frozen weight W, a dense
difference w (init 0) and gate logits log α (init 5): W' = W + z ⊙ w, z = HardConcrete(log α)
(Louizos, Welling, Kingma, ICLR 2018):

    training:  u ~ U(1e-4, 1 - 1e-4), s = σ((log u - log(1-u) + log α) / β),
               z = min(1, max(0, s (r - l) + l))
    test time: z = min(1, max(0, σ(log α) (r - l) + l))
    expected L0: Σ σ(log α - β log(-l / r)), added to the loss times λ (`l0`).

Defaults are the authors' (GitHub dguo98/DiffPruning, examples/run_glue_diffpruning.py,
`concrete_stretched` and the argparse defaults): β = 1 (their concrete has no temperature),
(l, r) = (-1.5, 1.5), log α init 5, λ = 1.25e-7, gate learning rate 0.1 (a separate AdamW
whose scheduler is never stepped: constant). Louizos et al.'s own values are β = 2/3,
(l, r) = (-0.1, 1.1): `diff_pruning(beta=0.667, lower=-0.1, upper=1.1)`.
structured=true adds the authors' per-tensor gate (their default `--per_params_alpha 1`):
one more hard-concrete z_g per weight tensor, W' = W + z_g z ⊙ w, its σ(log α_g - β log(-l/r))
counted once per tensor in the penalty, as their code does.
Whether a gate is sampled is decided by the dropout RNG: the train step passes one (sampled
gates), evaluation does not (test-time gates).

The projection to the target density and stage 2 (the fixed sparse mask) are in
unified_petl.train.diff_pruning.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

W = "_diff"  # the dense difference w, same shape as the weight
LOG_ALPHA = "_log_alpha"  # gate logits, same shape
GROUP = "_log_alpha_group"  # structured: one gate logit per tensor, shape []
U_MIN = 1e-4  # the authors clamp u to [1e-4, 1 - 1e-4]


def hard_concrete(log_alpha: jax.Array, key, lower: float, upper: float, beta: float
                  ) -> jax.Array:
    """Gates z in [0, 1], shaped like log_alpha: sampled with `key`, test-time without."""
    if key is None:
        s = jax.nn.sigmoid(log_alpha)
    else:
        u = jax.random.uniform(key, log_alpha.shape, jnp.float32, U_MIN, 1.0 - U_MIN)
        s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / beta)
    return jnp.clip(s * (upper - lower) + lower, 0.0, 1.0)


def expected_l0(log_alpha: jax.Array, lower: float, upper: float, beta: float) -> jax.Array:
    """P(z != 0) per gate: σ(log α - β log(-l / r))."""
    return jax.nn.sigmoid(log_alpha - beta * math.log(-lower / upper))


def add_gated(module, name: str, value: jax.Array, term) -> jax.Array:
    """value + z ⊙ w for the weight `name` of `module` (shapes of value)."""
    lower, upper, beta, alpha_init, structured = term.gate
    shape = tuple(value.shape)
    w = module.variable("delta", name + W, jnp.zeros, shape, jnp.float32).value
    log_alpha = module.variable("delta", name + LOG_ALPHA,
                                lambda: jnp.full(shape, alpha_init, jnp.float32)).value
    sample = module.has_rng("dropout")
    z = hard_concrete(log_alpha, module.make_rng("dropout") if sample else None, lower, upper,
                      beta)
    if structured:
        group = module.variable("delta", name + GROUP,
                                lambda: jnp.full((), alpha_init, jnp.float32)).value
        z = z * hard_concrete(group, module.make_rng("dropout") if sample else None, lower,
                              upper, beta)
    return value + z * w  # fp32 even for a bf16-stored weight, as a dense offset (see sparse)


def penalty(term, trainable: Any) -> jax.Array:
    """λ × the expected number of non-zero gates of the Δh tree `trainable` (a scalar)."""
    lower, upper, beta = term.gate[:3]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in traverse_util.flatten_dict(trainable).items():
        if path[-1].endswith(LOG_ALPHA) or path[-1].endswith(GROUP):
            total = total + expected_l0(leaf, lower, upper, beta).sum()
    return term.l0 * total


def is_gate(name: str) -> bool:
    """A gate-logit leaf (trained with its own learning rate)."""
    return name.endswith(LOG_ALPHA) or name.endswith(GROUP)


def gated_delta(term, delta: Any) -> dict[str, jax.Array]:
    """{params path: ẑ ⊙ w} from a stage-1 Δh tree, with the test-time gates."""
    lower, upper, beta = term.gate[:3]
    flat = traverse_util.flatten_dict(delta)
    out = {}
    for path, w in flat.items():
        if not path[-1].endswith(W):
            continue
        base = path[:-1] + (path[-1][:-len(W)],)
        z = hard_concrete(flat[base[:-1] + (base[-1] + LOG_ALPHA,)], None, lower, upper, beta)
        group = flat.get(base[:-1] + (base[-1] + GROUP,))
        if group is not None:
            z = z * hard_concrete(group, None, lower, upper, beta)
        out["/".join(base)] = z * w
    return out
