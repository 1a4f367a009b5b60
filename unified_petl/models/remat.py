"""Rematerialisation per layer: `jax.checkpoint` (flax's nn.remat) around each layer module.

Under a policy, a layer's backward pass recomputes what the policy does not save from the
layer's inputs instead of keeping every activation alive from the forward pass: activation
memory falls from O(layers x activations of a layer) to O(layers x layer inputs + one
layer's activations), for about one extra forward pass of compute. The lifted transform
keeps the module's name, so the parameter paths (and checkpoint loading) are unchanged,
and it draws the same dropout keys, so losses and gradients equal the run without remat.

Policies (the config key `remat`):
  none                              no rematerialisation
  full                              save nothing but the layer's inputs (jax.checkpoint
                                    without a policy)
  nothing_saveable                  the same, as the named jax.checkpoint_policies entry
  dots_saveable                     keep every matmul output, recompute the element-wise ops
  dots_with_no_batch_dims_saveable  keep the weight matmuls' outputs (no batch dimension in
                                    the contraction), recompute attention scores and the rest
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

POLICIES = ("none", "full", "nothing_saveable", "dots_saveable",
            "dots_with_no_batch_dims_saveable")


def check_policy(name: str) -> None:
    if name not in POLICIES:
        raise ValueError(f"remat={name!r}: use one of {', '.join(POLICIES)}")


@functools.lru_cache(maxsize=None)
def remat_layer(layer_cls, policy: str, deterministic_argnum: int):
    """`layer_cls`, or its rematerialised version under `policy`.

    deterministic_argnum: the position of the Python-bool `deterministic` argument of
    __call__, counting self as 0 (a static argument: it changes the traced program).
    """
    check_policy(policy)
    if policy == "none":
        return layer_cls
    named = None if policy == "full" else getattr(jax.checkpoint_policies, policy)
    return nn.remat(layer_cls, policy=named, static_argnums=(deterministic_argnum,))
