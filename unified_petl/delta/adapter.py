"""Bottleneck adapters: Δh = LN_out?(s · W_up(drop(ReLU(W_down(LN_in?(z)))))), and the
multi-head parallel adapter Δ_i = s · drop(ReLU(q_i P_k^(i)T)) P_v^(i) on attention heads, with
q = W_q LN?(x) + b_q from the frozen query projection.

Both follow the reference's forward (jxhe/unify-parameter-efficient-tuning, petl/petl_factory.py
Adapter_Layer.forward: LN "in" on the input, dropout on the hidden activation, the scale before
LN "out"; modeling_bart.py BartAttention, attn_option "cross_attn_relu"). Whether z is the
sub-layer input x (parallel) or the representation h itself (sequential) is decided by the
caller, at the points the model modules define; this module is only the function.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_petl.delta.gates import learned_gate
from unified_petl.delta.spec import SpecError, Term
from unified_petl.delta.variables import (constant, delta_param, normal, ones, torch_linear_init,
                                          zeros)


def _layer_norm(module: nn.Module, prefix: str, z: jax.Array, eps: float = 1e-5) -> jax.Array:
    d = z.shape[-1]
    scale = delta_param(module, f"{prefix}_scale", ones, (d,))
    bias = delta_param(module, f"{prefix}_bias", zeros, (d,))
    z32 = z.astype(jnp.float32)
    mean = z32.mean(-1, keepdims=True)
    var = ((z32 - mean) ** 2).mean(-1, keepdims=True)
    return ((z32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(z.dtype)


def _checked(term: Term) -> Term:
    if not term.resolved:
        raise SpecError(f"{term.short()} leaves options to the base model; build the model "
                        "with unified_petl.build, which sets them (Method.resolve)")
    return term


def _scale(module: nn.Module, term: Term):
    if term.learn_scale:
        return delta_param(module, "scale", constant(term.scale), ())
    return term.scale


class Adapter(nn.Module):
    """Bottleneck adapter of one term.

    Attributes: term (form=adapter, resolved), features (d of the output), dtype.
    __call__(z [..., d_in], deterministic) -> LN_out?(s·W_up(...)) [..., features]; a
    zero-effect init (init='lora') returns exactly 0 at initialisation. The dropout (p =
    term.dropout) hits the hidden activation [..., r] only when not deterministic. With
    term.learn_gate the output is multiplied by G(z) = σ(z W_g + b_g) [..., 1] (UniPELT's
    G_A, on the adapter's input z; variables gate_kernel, gate_bias).
    """

    term: Term
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
        t, d_in = _checked(self.term), z.shape[-1]
        gate_input = z
        if t.layernorm == "in":
            z = _layer_norm(self, "ln_in", z)
        if t.init == "lora":
            down_init, up_init = torch_linear_init(d_in), zeros
        else:  # bert: N(0, 0.02) weights, zero biases
            down_init, up_init = normal(0.02), normal(0.02)
        w_down = delta_param(self, "down_kernel", down_init, (d_in, t.size))
        b_down = delta_param(self, "down_bias", zeros, (t.size,))
        w_up = delta_param(self, "up_kernel", up_init, (t.size, self.features))
        b_up = delta_param(self, "up_bias", zeros, (self.features,))
        hidden = jax.nn.relu(z.astype(self.dtype) @ w_down.astype(self.dtype) + b_down)
        hidden = nn.Dropout(t.dropout)(hidden, deterministic=deterministic)
        out = _scale(self, t) * (hidden @ w_up.astype(self.dtype) + b_up)
        if t.layernorm == "out":  # LN(s·up), the reference's order (petl_factory.py)
            out = _layer_norm(self, "ln_out", out)
        if t.learn_gate:  # the gate reads the adapter's input before its LayerNorm
            out = learned_gate(self, "gate", gate_input, self.dtype) * out
        return out


class MultiHeadAdapter(nn.Module):
    """Multi-head parallel adapter on attention heads (MH PA), the reference's 'cross_attn_relu'.

    Per head i: Δ_i = s · drop(ReLU(q_i P_k^(i)T)) P_v^(i), q = project(LN(x)) with `project`
    the frozen query projection W_q x + b_q (no 1/√d_h, as the reference's BART) and LN a
    trainable LayerNorm of its own (layernorm='in'; 'none': the attention's own query, with
    s = d_h^-1/2 as the reference's RoBERTa, see Term.resolve). Dropout p = term.dropout (the
    attention dropout). P_k, P_v: [r, H, d_h] each, so 2·r·d parameters like a PA of the same
    r (plus 2·d for the LayerNorm).
    __call__(x [B, T, d], project: [B, T, d] -> [B, T, H, d_h], deterministic)
      -> Δ [B, T, H, d_h]; with term.learn_gate times G(x) = σ(x W_g + b_g) per position.
    """

    term: Term
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, project: Callable[[jax.Array], jax.Array],
                 deterministic: bool = True) -> jax.Array:
        t = _checked(self.term)
        gate = learned_gate(self, "gate", x, self.dtype)[..., None] if t.learn_gate else None
        if t.layernorm == "in":
            x = _layer_norm(self, "ln_in", x)
        q = project(x)
        _, _, heads, d_head = q.shape
        p_k = delta_param(self, "p_k", normal(0.02), (t.size, heads, d_head))
        v_init = zeros if t.init == "lora" else normal(0.02)
        p_v = delta_param(self, "p_v", v_init, (t.size, heads, d_head))
        scores = jnp.einsum("bthd,rhd->bhtr", q.astype(self.dtype), p_k.astype(self.dtype))
        act = nn.Dropout(t.dropout)(jax.nn.relu(scores), deterministic=deterministic)
        out = _scale(self, t) * jnp.einsum("bhtr,rhd->bthd", act, p_v.astype(self.dtype))
        return out if gate is None else gate * out
