"""LoRA: y = W x + b + s · B A drop(x), s = α/r (rsLoRA: α/√r), optionally gated (UniPELT).

A ~ kaiming-uniform(a=√5), i.e. U(±1/√d_in); B = 0, so the model starts as the base model.
In our [d_in, d_out] kernel layout, A is `lora_a` [d_in, r] and B is `lora_b` [r, d_out],
the transposes of PEFT's `lora_A.weight` [r, d_in] and `lora_B.weight` [d_out, r]; the
variables live in the projection's Dense (`encoder/layers_0/self_attn/q_proj/lora_a` is PEFT's
`...encoder.layers.0.self_attn.q_proj.lora_A.weight`, module names as
`unified_petl.models.loading.hf_key` maps them). PEFT's lora_alpha is `scale · r`
(`scale · √r` with `Term.rslora`, PEFT's use_rslora=True). DoRA (`Term.dora`) adds a magnitude
vector: `unified_petl.delta.dora`. Merging into the frozen weights: `unified_petl.delta.merge`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_petl.delta.gates import learned_gate
from unified_petl.delta.variables import delta_param, torch_linear_init, zeros


def lora_factors(module: nn.Module, term, d_in: int, features: int):
    """A [d_in, r] (kaiming-uniform) and B [r, features] (zeros) of `term` in `module`."""
    a = delta_param(module, "lora_a", torch_linear_init(d_in), (d_in, term.size))
    b = delta_param(module, "lora_b", zeros, (term.size, features))
    return a, b


def lora_delta(module: nn.Module, term, x: jax.Array, features: int, deterministic: bool,
               dtype=jnp.float32) -> jax.Array:
    """s · drop(x) A B for x [..., d_in] -> [..., features], times the learned gate G(x)
    [..., 1] when term.learn_gate (UniPELT: the gate reads x before the dropout)."""
    a, b = lora_factors(module, term, x.shape[-1], features)
    xd = nn.Dropout(term.dropout)(x, deterministic=deterministic)
    out = term.scale * ((xd.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype))
    if term.learn_gate:
        out = learned_gate(module, "lora_gate", x, dtype) * out
    return out
