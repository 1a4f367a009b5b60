"""Bottleneck adapters: Δh = s · W_up(drop(ReLU(W_down(LN_in?(z))))) [· LN_out], and the
multi-head parallel adapter Δ_i = ReLU(q_i P_k^(i)T) P_v^(i) on attention heads.

Whether z is the sub-layer input x (parallel) or the representation h itself (sequential) is
decided by the caller, at the points the model modules define; this module is only the function.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_petl.delta.spec import Term
from unified_petl.delta.variables import delta_param, normal, ones, constant, torch_linear_init, zeros


def _layer_norm(module: nn.Module, prefix: str, z: jax.Array, eps: float = 1e-5) -> jax.Array:
    d = z.shape[-1]
    scale = delta_param(module, f"{prefix}_scale", ones, (d,))
    bias = delta_param(module, f"{prefix}_bias", zeros, (d,))
    z32 = z.astype(jnp.float32)
    mean = z32.mean(-1, keepdims=True)
    var = ((z32 - mean) ** 2).mean(-1, keepdims=True)
    return ((z32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(z.dtype)


def _scale(module: nn.Module, term: Term):
    if term.learn_scale:
        return delta_param(module, "scale", constant(term.scale), ())
    return term.scale


class Adapter(nn.Module):
    """Bottleneck adapter of one term.

    Attributes: term (form=adapter), features (d of the output), dtype (compute dtype).
    __call__(z [..., d_in], deterministic) -> s·Δh [..., features]; a zero-effect init
    (init='lora') returns exactly 0 at initialisation.
    """

    term: Term
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
        t, d_in = self.term, z.shape[-1]
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
        out = hidden @ w_up.astype(self.dtype) + b_up
        if t.layernorm == "out":
            out = _layer_norm(self, "ln_out", out)
        return _scale(self, t) * out


class MultiHeadAdapter(nn.Module):
    """Multi-head parallel adapter on attention heads (MH PA).

    Per head i: Δ_i = ReLU(q_i P_k^(i)T) P_v^(i), with q the frozen query projection (no
    1/√d_h, as the reference). P_k, P_v: [r, H, d_h] each, so 2·r·d parameters like a PA of
    the same r. __call__(q [B, T, H, d_h]) -> Δ [B, T, H, d_h].
    """

    term: Term
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, deterministic: bool = True) -> jax.Array:
        t = self.term
        _, _, heads, d_head = q.shape
        p_k = delta_param(self, "p_k", normal(0.02), (t.size, heads, d_head))
        v_init = zeros if t.init == "lora" else normal(0.02)
        p_v = delta_param(self, "p_v", v_init, (t.size, heads, d_head))
        scores = jnp.einsum("bthd,rhd->bhtr", q.astype(self.dtype), p_k.astype(self.dtype))
        act = nn.Dropout(t.dropout)(jax.nn.relu(scores), deterministic=deterministic)
        out = jnp.einsum("bhtr,rhd->bthd", act, p_v.astype(self.dtype))
        return _scale(self, t) * out
