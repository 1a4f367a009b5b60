"""Prefix tuning: per layer P_k, P_v [l, d] for each attention (encoder self, decoder self,
decoder cross: three independent sets), optionally reparameterised by an MLP during training.

MLP (reference): Embedding(l, d) -> Linear(d, 800) -> tanh -> Linear(800, L·2·d), PyTorch
default inits. `eject` replaces the MLP by the prefixes it produces, for storage and inference.

Two equivalent computations (paper eq. 5-7):
  concat: softmax(q [P_k; K]^T) [P_v; V]  (the prefixes prepended, mask gets zeros prepended)
  gated:  (1 - λ) softmax(q K^T) V + λ softmax(q P_k^T) P_v,
          λ = Σexp(q P_k^T) / (Σexp(q P_k^T) + Σexp(q K^T)).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from unified_petl.delta.spec import Method, Term
from unified_petl.delta.variables import delta_param, normal, torch_linear_init
from unified_petl.models.dropout import dropout

SITES = ("encoder", "decoder", "cross")  # prefix sets: encoder self, decoder self, decoder cross


def prefix_mlp(variables: dict, n_layers: int, d: int) -> jax.Array:
    """The reparameterisation: {embedding [l, d], w1, b1, w2, b2} -> prefixes [L, 2, l, d]."""
    hidden = jnp.tanh(variables["embedding"] @ variables["w1"] + variables["b1"])
    out = hidden @ variables["w2"] + variables["b2"]  # [l, L·2·d]
    l = out.shape[0]
    return out.reshape(l, n_layers, 2, d).transpose(1, 2, 0, 3)


class PrefixSet(nn.Module):
    """One set of prefixes for all layers of one attention kind.

    __call__() -> [L, 2, l, d]: index [i, 0] is P_k of layer i, [i, 1] is P_v.
    """

    term: Term
    n_layers: int
    d_model: int

    @nn.compact
    def __call__(self) -> jax.Array:
        t, L, d = self.term, self.n_layers, self.d_model
        if not t.mlp:
            return delta_param(self, "kv", normal(0.02), (L, 2, t.size, d))
        h = t.mlp_hidden
        variables = {
            "embedding": delta_param(self, "embedding", normal(1.0), (t.size, d)),
            "w1": delta_param(self, "w1", torch_linear_init(d), (d, h)),
            "b1": delta_param(self, "b1", torch_linear_init(d), (h,)),
            "w2": delta_param(self, "w2", torch_linear_init(h), (h, L * 2 * d)),
            "b2": delta_param(self, "b2", torch_linear_init(h), (L * 2 * d,)),
        }
        return prefix_mlp(variables, L, d)


def split_heads(prefix: jax.Array, n_heads: int) -> tuple[jax.Array, jax.Array]:
    """[2, l, d] -> P_k, P_v each [l, H, d_h]."""
    _, l, d = prefix.shape
    kv = prefix.reshape(2, l, n_heads, d // n_heads)
    return kv[0], kv[1]


def drop_probabilities(probs: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
    """Attention-probability dropout: each entry kept with probability 1 - rate, rescaled."""
    return dropout(probs, rng, rate)  # keep_mask: 16 random bits per entry


def gated_prefix_attention(q, k, v, bias, p_k, p_v, *, scale: float, gate: bool = True,
                           dropout_rng=None, dropout: float = 0.0, learned_gate=None):
    """Explicit form of prefix attention for one layer.

    q [B, T, H, d_h], k/v [B, S, H, d_h], bias [B, 1|H, T, S] additive mask, p_k/p_v [l, H, d_h].
    Returns (heads [B, T, H, d_h], λ [B, H, T]). With gate=False the prefix term is added
    without λ (the paper's "-gating" ablation). dropout_rng: attention-probability dropout
    of rate `dropout` on both softmaxes (as the concatenated form drops entries of its one
    softmax); λ itself is not dropped. learned_gate G [B, T] (UniPELT, `unified_petl.delta.
    gates`): query t sees the prefixes G_t·P_k, G_t·P_v, i.e. its prefix logits and its prefix
    values are scaled by G_t.
    """
    logits = jnp.einsum("bthd,bshd->bhts", q, k) * scale + bias
    p_logits = jnp.einsum("bthd,lhd->bhtl", q, p_k) * scale
    if learned_gate is not None:
        p_logits = p_logits * learned_gate[:, None, :, None]
    lse = jax.nn.logsumexp(logits, axis=-1)
    p_lse = jax.nn.logsumexp(p_logits, axis=-1)
    probs, p_probs = jax.nn.softmax(logits, -1), jax.nn.softmax(p_logits, -1)
    if dropout_rng is not None and dropout > 0.0:
        key, p_key = jax.random.split(dropout_rng)
        probs = drop_probabilities(probs, key, dropout)
        p_probs = drop_probabilities(p_probs, p_key, dropout)
    attn = jnp.einsum("bhts,bshd->bthd", probs, v)
    p_attn = jnp.einsum("bhtl,lhd->bthd", p_probs, p_v)
    if learned_gate is not None:
        p_attn = p_attn * learned_gate[:, :, None, None]
    lam = jax.nn.sigmoid(p_lse - lse)  # Σexp(P) / (Σexp(P) + Σexp(K))
    if not gate:
        return attn + p_attn, lam
    lam_b = lam.transpose(0, 2, 1)[..., None]  # [B, T, H, 1]
    return (1.0 - lam_b) * attn + lam_b * p_attn, lam


def eject(method: Method, delta: Any):
    """Replace each prefix MLP by the prefixes it computes.

    Returns (method with mlp=False, delta whose prefix sets hold only `kv` [L, 2, l, d]).
    Outputs of the model are unchanged; the stored size drops to 2·l·d per layer and set.
    """
    term = method.prefix
    if term is None or not term.mlp:
        return method, delta
    flat = traverse_util.flatten_dict(delta)
    roots = sorted({p[:-1] for p in flat if p[-1] == "w2"})
    out = {p: v for p, v in flat.items() if p[:-1] not in roots}
    for root in roots:
        mlp_vars = {name: jnp.asarray(flat[root + (name,)], jnp.float32)
                    for name in ("embedding", "w1", "b1", "w2", "b2")}
        width = mlp_vars["w2"].shape[1]
        d = mlp_vars["embedding"].shape[1]
        out[root + ("kv",)] = prefix_mlp(mlp_vars, width // (2 * d), d)

    new_terms = tuple(dataclasses.replace(t, mlp=False) if t is term else t for t in method.terms)
    ejected = Method(terms=new_terms, name=method.name, train_head=method.train_head)
    return ejected, traverse_util.unflatten_dict(out)
