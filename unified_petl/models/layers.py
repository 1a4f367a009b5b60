"""Building blocks of the base models, each with the Δh points of the paper.

Every frozen weight is read through `frozen_param` (masked offsets, BitFit); linear layers carry
the weight terms (LoRA, rsLoRA, DoRA, IA3); `Attention` exposes the head outputs before W_o
(prefixes, gated prefixes, learned prefix gates, multi-head PA), the concatenated heads
(attention PA) and the attention output (sequential attention adapter).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_petl.delta import compose
from unified_petl.delta.adapter import Adapter, MultiHeadAdapter
from unified_petl.delta.dora import dora_output
from unified_petl.delta.gates import learned_gate
from unified_petl.delta.ia3 import ia3_vector
from unified_petl.delta.lora import lora_delta
from unified_petl.delta.prefix import drop_probabilities, gated_prefix_attention, split_heads
from unified_petl.delta.spec import Method
from unified_petl.delta.variables import frozen_param, normal, ones, zeros

# Which module names a LoRA / IA3 target means, in BART and BERT/RoBERTa naming (transformers'
# names: BART q_proj ... fc2; RoBERTa attention.self.query, ..., attention.output.dense (o),
# intermediate.dense (fc1), output.dense (fc2), see loading.HF_RENAMES).
PROJECTION_NAMES = {"q": ("q_proj", "query"), "k": ("k_proj", "key"),
                    "v": ("v_proj", "value"), "o": ("out_proj", "out"),
                    "fc1": ("fc1", "intermediate"), "fc2": ("fc2", "output")}
LORA_NAMES = PROJECTION_NAMES  # the name before IA3 shared it


def projection_target(site: tuple[str, ...]) -> Optional[str]:
    """The target (q, k, v, o, fc1, fc2) of a Dense at path `site`, None for other layers."""
    for target, names in PROJECTION_NAMES.items():
        if site and site[-1] in names:
            return target
    return None

NEG_INF = float(jnp.finfo(jnp.float32).min)


class Dense(nn.Module):
    """y = x W + b with the weight terms of projection `target` (q, k, v, o, fc1, fc2; None:
    a layer no term targets). kernel [d_in, features] (the transpose of PyTorch's weight).

    At most one weight term per projection (`Method.validate`): LoRA / rsLoRA
    y = xW + b + s·BA x (optionally gated), DoRA y = (m/n)(xW + s·BA x) + b, IA3
    y = l ⊙ (xW + b) (output target) or y = (l ⊙ x)W + b (input target).
    """

    features: int
    method: Method = Method()
    target: Optional[str] = None
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        patterns = self.method.masked_patterns
        kernel = frozen_param(self, "kernel", normal(0.02), (x.shape[-1], self.features),
                              patterns)
        lora = self.method.lora_for(self.target) if self.target else None
        ia3 = self.method.ia3_for(self.target) if self.target else None
        ia3_on_input = ia3 is not None and self.target in ia3.input_targets
        if ia3_on_input:  # PEFT's feedforward IA3: the input is rescaled
            x = compose.multiply(x, ia3_vector(self, x.shape[-1]).astype(x.dtype))
        y = x.astype(self.dtype) @ kernel.astype(self.dtype)
        if lora is not None and lora.dora:
            y = dora_output(self, lora, x, kernel, y, deterministic, self.dtype)
        elif lora is not None:
            y = y + lora_delta(self, lora, x, self.features, deterministic, self.dtype)
        if self.use_bias:
            y = y + frozen_param(self, "bias", zeros, (self.features,), patterns).astype(self.dtype)
        if ia3 is not None and not ia3_on_input:  # the output, bias included (PEFT)
            y = compose.multiply(y, ia3_vector(self, self.features).astype(y.dtype))
        return y


class LayerNorm(nn.Module):
    """LayerNorm in fp32 with PyTorch's parameters (scale = weight, bias)."""

    eps: float = 1e-5
    method: Method = Method()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = frozen_param(self, "scale", ones, (d,), self.method.masked_patterns)
        bias = frozen_param(self, "bias", zeros, (d,), self.method.masked_patterns)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        trained = (self.method.full or self.has_variable("delta", "scale")
                   or self.has_variable("delta", "bias"))
        if not trained:  # a trained scale or bias already sums the gradient over the rows
            y = materialize_cotangent(y)
        return y.astype(x.dtype)


@jax.custom_vjp
def materialize_cotangent(y: jax.Array) -> jax.Array:
    """Identity on y [..., d] whose backward makes XLA CPU write the incoming gradient once.

    When no LayerNorm parameter is trained (LoRA, adapters, prefixes), the gradient of the
    residual stream passes from layer to layer through element-wise ops only, and XLA CPU's
    fusion pass duplicates that chain into each later fusion: every layer's backward recomputes
    the LayerNorm backward of all the layers above it (fusions of up to 266 operands; the
    roberta-base LoRA step on 2 CPU cores goes from 5.5 s to 3.7 s with this). A sum over
    the rows is an operand XLA CPU does not fuse into, so it makes XLA materialise the gradient;
    XLA does not fold 0·x for floats, and the term adds exactly 0 to a finite gradient (a
    non-finite one stays non-finite, and the trainer stops on it). On GPU it costs one read.
    """
    return y


def _materialize_fwd(y):
    return y, None


def _materialize_bwd(_, g):
    return (g + 0.0 * g.sum(tuple(range(g.ndim - 1))),)


materialize_cotangent.defvjp(_materialize_fwd, _materialize_bwd)


class Embed(nn.Module):
    """Embedding table [num, features]; `attend` gives the tied LM-head logits."""

    num: int
    features: int
    method: Method = Method()

    def setup(self):
        self.embedding = frozen_param(self, "embedding", normal(0.02), (self.num, self.features),
                                      self.method.masked_patterns)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        return x @ self.embedding.astype(x.dtype).T


def padding_bias(mask: jax.Array) -> jax.Array:
    """attention_mask [B, S] (1 = token) -> additive bias [B, 1, 1, S]."""
    return jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)


def causal_bias(length: int) -> jax.Array:
    """[1, 1, T, T] additive bias that hides future positions."""
    allowed = jnp.tril(jnp.ones((length, length), bool))
    return jnp.where(allowed, 0.0, NEG_INF)[None, None].astype(jnp.float32)


class Attention(nn.Module):
    """Multi-head attention with the paper's Δh points.

    Attributes:
      num_heads, method: the Δh method; site: which prefix set applies (encoder / decoder /
      cross); names: module names of the q, k, v, o projections (BART or BERT naming);
      dropout: attention-probability dropout; decode: self-attention with a KV cache
      (`cache` collection, preallocated to the length of the first call's `max_length`);
      cross (decode only): encoder-decoder attention whose K/V are computed once, from the `kv`
      of the first call, and then read from the cache (`cross_key`, `cross_value`) when
      `kv` is None; `kv` (and the bias) may have B rows for B·K query rows (K beams per
      example, rows b·K + j): the cache then holds each example once. Prefixes are never
      cached: they are prepended at every call.
    __call__(x [B, T, d], kv [B, S, d] or None (self-attention), bias [B, 1|H, T, S] additive,
      prefix [2, l, d] or None, deterministic) -> attention output [B, T, d] (after W_o and the
      sequential attention adapter, before the sub-layer's dropout and residual).
    """

    num_heads: int
    method: Method = Method()
    names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "out_proj")
    dropout: float = 0.0
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    cross: bool = False

    def _dense(self, d, target, name):
        return Dense(d, self.method, target=target, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x, kv=None, bias=None, prefix=None, deterministic=True):
        d = x.shape[-1]
        heads, d_head = self.num_heads, d // self.num_heads
        split = lambda y: y.reshape(y.shape[:-1] + (heads, d_head))
        q_proj = self._dense(d, "q", self.names[0])
        q = split(q_proj(x, deterministic))
        qa = q  # the queries as attention sees them
        if self.decode and self.cross:
            k, v = self._cross_cache(kv, split, d, deterministic)
            # The cache may hold one row per example for B·beams query rows (beam search):
            # fold the beams into the query axis, [B·K, T] -> [B, K·T], rather than copy K/V.
            beams = q.shape[0] // k.shape[0]
            if beams * k.shape[0] != q.shape[0]:
                raise ValueError(f"{q.shape[0]} query rows for {k.shape[0]} cached rows")
            qa = q.reshape((k.shape[0], beams * q.shape[1]) + q.shape[2:])
        else:
            is_self = kv is None
            kv = x if is_self else kv
            k = split(self._dense(d, "k", self.names[1])(kv, deterministic))
            v = split(self._dense(d, "v", self.names[2])(kv, deterministic))
            if self.decode and is_self:
                k, v, bias = self._extend_cache(k, v, bias)
        if bias is None:
            bias = jnp.zeros((1, 1, 1, 1), jnp.float32)
        scale = d_head ** -0.5
        dropout_rng = None
        if self.dropout > 0.0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        prefix_term = self.method.prefix
        explicit = prefix is not None and (prefix_term.explicit_gate or prefix_term.learn_gate
                                           or prefix_term.composition == "add")
        if explicit:  # the gated form term by term
            p_k, p_v = split_heads(prefix.astype(q.dtype), heads)
            learned = None
            if prefix_term.learn_gate:  # UniPELT's G_P(x_t), per query row as qa holds them
                learned = learned_gate(self, "prefix_gate", x, q.dtype).reshape(qa.shape[:2])
            out, lam = gated_prefix_attention(qa, k, v, bias, p_k, p_v, scale=scale,
                                              gate=prefix_term.composition == "gated",
                                              dropout_rng=dropout_rng, dropout=self.dropout,
                                              learned_gate=learned)
            self.sow("intermediates", "prefix_gate", lam)
        else:
            if prefix is not None:  # concatenation: K <- [P_k; K], V <- [P_v; V]
                p_k, p_v = split_heads(prefix.astype(q.dtype), heads)
                b = k.shape[0]
                k = jnp.concatenate([jnp.broadcast_to(p_k, (b,) + p_k.shape), k], axis=1)
                v = jnp.concatenate([jnp.broadcast_to(p_v, (b,) + p_v.shape), v], axis=1)
                bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (p_k.shape[0], 0)))
            out = self._softmax_attention(qa, k, v, bias, scale, dropout_rng)
        out = out.reshape(q.shape)  # unfold beams (a no-op otherwise)
        for term in self.method.adapters("heads"):  # multi-head PA, before W_o
            # its own query W_q LN(x) + b_q through the frozen projection (and its LoRA, as the
            # reference's q_proj), unscaled
            project = lambda z: split(q_proj(z, deterministic))
            out = out + MultiHeadAdapter(term, self.dtype, name="mh_adapter")(x, project,
                                                                               deterministic)
        out = out.reshape(out.shape[:2] + (d,))
        for term in self.method.adapters("attn", "parallel"):  # PA: Adapter(x) before W_o
            out = out + Adapter(term, d, self.dtype, name="attn_adapter")(x, deterministic)
        out = self._dense(d, "o", self.names[3])(out, deterministic)
        for term in self.method.adapters("attn", "sequential"):  # o <- o + Adapter(o)
            out = out + Adapter(term, d, self.dtype, name="attn_adapter")(out, deterministic)
        return out

    def _softmax_attention(self, q, k, v, bias, scale, dropout_rng):
        logits = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * scale + bias
        probs = jax.nn.softmax(logits, axis=-1)
        if dropout_rng is not None:
            probs = drop_probabilities(probs, dropout_rng, self.dropout)
        return jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype), v)

    def _cross_cache(self, kv, split, d, deterministic):
        """Encoder-decoder K/V [B, S, H, d_h]: projected from `kv` and stored when it is given,
        read from the cache when it is None (every decoding step after the first)."""
        if kv is None:
            if not self.has_variable("cache", "cross_key"):
                raise ValueError("cross-attention in decode mode needs the encoder output on the "
                                 "first call (it fills the cross K/V cache)")
            return (self.get_variable("cache", "cross_key"),
                    self.get_variable("cache", "cross_value"))
        k = split(self._dense(d, "k", self.names[1])(kv, deterministic))
        v = split(self._dense(d, "v", self.names[2])(kv, deterministic))
        self.put_variable("cache", "cross_key", k)
        self.put_variable("cache", "cross_value", v)
        return k, v

    def _extend_cache(self, k, v, bias):
        """Write this step's K/V into the preallocated cache; attend to all filled slots."""
        cached_k = self.variable("cache", "key", lambda: jnp.zeros_like(k))
        cached_v = self.variable("cache", "value", lambda: jnp.zeros_like(v))
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if self.is_initializing():
            return k, v, bias
        steps, max_len = k.shape[1], cached_k.value.shape[1]
        i = index.value
        cached_k.value = jax.lax.dynamic_update_slice(
            cached_k.value, k.astype(cached_k.value.dtype), (0, i, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(
            cached_v.value, v.astype(cached_v.value.dtype), (0, i, 0, 0))
        index.value = i + steps
        positions = jnp.arange(max_len)[None, :]
        query_pos = i + jnp.arange(steps)[:, None]
        step_bias = jnp.where(positions <= query_pos, 0.0, NEG_INF)[None, None]
        if bias is not None:  # e.g. padding of the decoder prompt, already [B, 1, T, max_len]
            step_bias = step_bias + bias
        return cached_k.value, cached_v.value, step_bias
