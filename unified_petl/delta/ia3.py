"""IA3 (Liu et al., NeurIPS 2022): learned vectors that rescale a projection, h <- l ⊙ h.

The composition axis' multiplicative point. On a projection y = x W + b (kernel W [d_in,
d_out]) an IA3 vector l either scales its output or, for the FFN, its input:

    output target (k, v, ...):       y <- l ⊙ (x W + b),   l [d_out]
    input target (fc2, in inputs=):  y <- (l ⊙ x) W + b,   l [d_in]  (the FFN's intermediate
                                                                      activation, after dropout)

as PEFT's IA3 Linear computes them (peft/tuners/ia3/layer.py Linear.forward: `result *
ia3_scaling` after the base layer, bias included; `x * ia3_scaling` before it when
is_feedforward). l starts at ones (init_ia3_weights=True), so the model starts as the base.

Variable: `ia3_l` [d_out] (output target) or [d_in] (input target) in the `delta` collection of
the projection's Dense, e.g. `encoder/layers_0/self_attn/k_proj/ia3_l` or
`encoder/layers_0/ffn/fc2/ia3_l`. PEFT's state dict holds the same numbers under the module's
transformers name (`unified_petl.models.loading.hf_key` of the kernel path: layers_0 ->
layers.0, BART's `ffn/` scope dropped, RoBERTa's renames) with `.ia3_l` in place of
`.weight`, shaped [d_out, 1] (output target) or [1, d_in] (feedforward). An exporter needs
the term's `targets` (PEFT's target_modules, names in
`unified_petl.models.layers.PROJECTION_NAMES`) and `input_targets` (feedforward_modules).

Merging (`fold`): output target: W[:, j] <- l_j W[:, j] and b <- l ⊙ b; input target:
W[i, :] <- l_i W[i, :], b unchanged (PEFT's Linear.merge).
"""
from __future__ import annotations

import flax.linen as nn
import jax

from unified_petl.delta.variables import delta_param, ones


def ia3_vector(module: nn.Module, features: int) -> jax.Array:
    """The IA3 vector l [features] of the projection `module` (init ones)."""
    return delta_param(module, "ia3_l", ones, (features,))


def fold(kernel: jax.Array, bias, l: jax.Array, on_input: bool):
    """(kernel [d_in, d_out], bias [d_out] | None) with l folded in; exact in fp32."""
    if on_input:
        return kernel * l[:, None], bias
    return kernel * l[None, :], None if bias is None else bias * l
