"""DoRA (Liu et al., ICML 2024): a magnitude vector and a LoRA update of the direction.

    W' = m ⊙ (W + s·B A) / ||W + s·B A||,   norm over the input dimension, one per output unit

as PEFT computes it for a Linear layer with use_dora=True (peft/tuners/lora/dora.py
DoraLinearLayer.forward and variants.py DoraLinearVariant.forward):

    y = x W + b + (m/n - 1) ⊙ (drop(x) W) + (m/n) ⊙ s · drop(x) A B,   n = ||W + s·B A||

with n treated as a constant in the gradient (stop_gradient; DoRA section 4.3) and, without
dropout (or when deterministic), drop(x) W = x W, so y = (m/n) ⊙ (x W + s·x A B) + b. m starts
at ||W|| (B = 0), so the model starts as the base model.

Variables (the Dense of the projection, `delta` collection): `lora_a` [d_in, r], `lora_b` [r,
d_out] (`unified_petl.delta.lora`) and `lora_magnitude` [d_out], PEFT's
`lora_magnitude_vector` (the `.weight` of a DoraLinearLayer in its state dict, same shape).
In our kernel layout W [d_in, d_out], the norm is over axis 0.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_petl.delta.lora import lora_factors


def weight_norm(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """||W + s·A B|| per output unit: kernel [d_in, d_out] -> [d_out], in fp32."""
    w = kernel.astype(jnp.float32) + scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
    return jnp.sqrt(jnp.sum(w * w, axis=0))


def dora_output(module: nn.Module, term, x: jax.Array, kernel: jax.Array, y0: jax.Array,
                deterministic: bool, dtype=jnp.float32) -> jax.Array:
    """The DoRA projection without its bias.

    x [..., d_in], kernel W [d_in, d_out] (the frozen weight as the layer reads it), y0 = x W
    [..., d_out] -> [..., d_out].
    """
    a, b = lora_factors(module, term, x.shape[-1], kernel.shape[1])
    magnitude = module.variable("delta", "lora_magnitude",
                                lambda: weight_norm(kernel, a, b, term.scale)).value
    norm = jax.lax.stop_gradient(weight_norm(kernel, a, b, term.scale))
    ratio = (magnitude / norm).astype(dtype)
    if deterministic or term.dropout == 0.0:
        xd, base = x, y0
    else:  # PEFT recomputes the base on the dropped input (variants.py, base_result=None)
        xd = nn.Dropout(term.dropout)(x, deterministic=False)
        base = xd.astype(dtype) @ kernel.astype(dtype)
    update = term.scale * ((xd.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype))
    return y0 + (ratio - 1.0) * base + ratio * update
