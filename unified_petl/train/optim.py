"""The optimiser as the paper ran it: AdamW, linear warmup then linear decay, clipping.

The reference code used transformers' Trainer / fairseq defaults, which we mirror with optax:
- learning rate: 0 -> lr linearly over the warmup steps, then lr -> end_lr linearly at
  total_steps (polynomial decay of power 1; transformers' get_linear_schedule_with_warmup);
- global-norm clipping of the gradient before Adam (max_grad_norm <= 0 turns it off);
- decoupled weight decay only on leaves with ndim >= 2: biases, LayerNorm scales/offsets and
  scalar gates are not decayed (the reference code's "no_decay" list, written as a rule on
  shapes so it also covers Δh variables it never named).

The optimiser only ever sees the trainable tree (Δh; for full fine-tuning the base weights
too), so its state is as small as Δh.

Method-specific parts (`make_optimizer(..., method=...)`):
- Child-Tuning (unified_petl.train.child_tuning): the gradient mask sits between the clipping
  and AdamW, as in the authors' ChildTuningAdamW;
- diff pruning (unified_petl.delta.diff_pruning): the gate logits get their own Adam at a
  constant learning rate (`diff_pruning(alpha_lr=0.1)`), no weight decay, clipped apart from
  the rest, as the authors' separate `alpha_optimizer` (run_glue_diffpruning.py: AdamW(lr
  0.1) whose scheduler is never stepped; `clip_grad_norm_` per parameter group).

Paper settings (REFERENCE.md): XSum lr 5e-5, no warmup, wd 0.01, clip 0.1, default betas;
en-ro the same with betas (0.9, 0.98), eps 1e-6, clip 1.0; GLUE lr 1e-4, warmup 6 %, wd 0.1,
clip 1.0, betas (0.9, 0.98), eps 1e-6.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax

# The keys of `config.optim` and their defaults (transformers' AdamW defaults).
DEFAULTS = dict(lr=5e-5, warmup_steps=0, warmup_ratio=0.0, end_lr=0.0, b1=0.9, b2=0.999,
                eps=1e-8, weight_decay=0.0, max_grad_norm=1.0)


def warmup_steps(optim: Any, total_steps: int) -> int:
    """Warmup length: warmup_steps if > 0, else round(warmup_ratio × total_steps)."""
    steps = int(_get(optim, "warmup_steps"))
    if steps <= 0:
        steps = int(round(float(_get(optim, "warmup_ratio")) * total_steps))
    return steps


def schedule(optim: Any, total_steps: int) -> optax.Schedule:
    """step -> learning rate: linear warmup to lr, then linear decay to end_lr at total_steps."""
    lr, end = float(_get(optim, "lr")), float(_get(optim, "end_lr"))
    warm = min(warmup_steps(optim, total_steps), total_steps)
    decay = optax.linear_schedule(lr, end, max(total_steps - warm, 1))
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def decay_mask(tree: Any) -> Any:
    """True for the leaves that get weight decay: matrices and larger (ndim >= 2)."""
    return jax.tree.map(lambda x: x.ndim >= 2, tree)


def make_optimizer(optim: Any, total_steps: int, method: Any = None
                   ) -> tuple[optax.GradientTransformation, Callable]:
    """(optax transformation, schedule) from `config.optim` (a ConfigDict or a dict).

    Keys (missing ones take DEFAULTS): lr, warmup_steps | warmup_ratio, end_lr, b1, b2, eps,
    weight_decay, max_grad_norm. method: the model's Method, for Child-Tuning's gradient
    mask and diff pruning's gate optimiser (see the module docstring).
    """
    check(optim, total_steps)
    lr = schedule(optim, total_steps)
    clip = float(_get(optim, "max_grad_norm"))
    parts = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    child = getattr(method, "grad_mask", None)
    if child is not None:
        from unified_petl.train.child_tuning import mask_gradients

        parts.append(mask_gradients(child))
    parts.append(optax.adamw(lr, b1=float(_get(optim, "b1")), b2=float(_get(optim, "b2")),
                             eps=float(_get(optim, "eps")),
                             weight_decay=float(_get(optim, "weight_decay")), mask=decay_mask))
    tx = optax.chain(*parts)
    diff = getattr(method, "diff", None)
    if diff is not None:
        from unified_petl.delta.diff_pruning import is_gate

        gates = ([optax.clip_by_global_norm(clip)] if clip > 0 else []) + [
            optax.adam(diff.gate_lr, b1=float(_get(optim, "b1")), b2=float(_get(optim, "b2")),
                       eps=float(_get(optim, "eps")))]
        labels = lambda tree: jax.tree_util.tree_map_with_path(
            lambda path, _: "gates" if is_gate(str(getattr(path[-1], "key", path[-1])))
            else "rest", tree)
        tx = optax.multi_transform({"rest": tx, "gates": optax.chain(*gates)}, labels)
    return tx, lr


def check(optim: Any, total_steps: int) -> None:
    """One clear line for each optimiser setting that cannot work."""
    unknown = sorted(set(_keys(optim)) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown optim key(s) {unknown}; known: {sorted(DEFAULTS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not float(_get(optim, "lr")) > 0:
        raise ValueError(f"optim.lr={_get(optim, 'lr')} must be > 0")
    if not 0.0 <= float(_get(optim, "warmup_ratio")) < 1.0:
        raise ValueError(f"optim.warmup_ratio={_get(optim, 'warmup_ratio')} must be in [0, 1)")
    if warmup_steps(optim, total_steps) > total_steps:
        raise ValueError(f"warmup of {warmup_steps(optim, total_steps)} steps is longer than "
                         f"total_steps={total_steps}; lower optim.warmup_steps")
    for key in ("b1", "b2"):
        if not 0.0 <= float(_get(optim, key)) < 1.0:
            raise ValueError(f"optim.{key}={_get(optim, key)} must be in [0, 1)")
    if float(_get(optim, "weight_decay")) < 0:
        raise ValueError(f"optim.weight_decay={_get(optim, 'weight_decay')} must be >= 0")


def _keys(optim: Any):
    return list(optim.keys()) if hasattr(optim, "keys") else []


def _get(optim: Any, key: str):
    if hasattr(optim, "keys") and key in optim.keys():
        value = optim[key]
        return DEFAULTS[key] if value is None else value
    return DEFAULTS[key]
