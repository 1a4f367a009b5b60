"""BART and mBART as one Flax encoder-decoder, matching transformers' PyTorch models.

BART: post-LN layers, layernorm_embedding, learned positions with offset 2, tied embeddings,
final_logits_bias. mBART (`pre_ln`): pre-LN layers plus a final encoder / decoder LayerNorm,
embeddings scaled by sqrt(d). Parameter names mirror transformers' (layers.N -> layers_N,
weight -> kernel [transposed] / scale / embedding), so checkpoints map one to one.

Δh points (REFERENCE.md): attention heads, attention output and K/V prefixes live in
`layers.Attention`; the FFN points are in `FeedForward`; prompts are prepended in `Encoder`.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from unified_petl.delta.adapter import Adapter
from unified_petl.delta.prefix import PrefixSet
from unified_petl.delta.spec import Method
from unified_petl.delta.variables import delta_param, frozen_param, normal, zeros
from unified_petl.models.config import ArchConfig, activation_fn
from unified_petl.models.dropout import Dropout
from unified_petl.models.layers import (Attention, Dense, Embed, LayerNorm, causal_bias,
                                        padding_bias)
from unified_petl.models.remat import remat_layer

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding


@flax.struct.dataclass
class Seq2SeqOutput:
    logits: jax.Array  # [B, T, V]
    last_hidden_state: jax.Array  # decoder output [B, T, d]
    encoder_last_hidden_state: jax.Array  # [B, S(+prompt), d]
    encoder_attention_mask: jax.Array  # [B, S(+prompt)]


class FeedForward(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop, with the FFN Δh points.

    __call__(u [B, T, d], x_parallel [B, T, d]) -> f [B, T, d], the sub-layer output before the
    residual: sequential adapters see f, parallel adapters see x_parallel (the sub-layer input:
    the LN output for BART, the un-normalised residual stream for mBART).
    """

    cfg: ArchConfig
    ffn_dim: int
    method: Method
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, u, x_parallel, deterministic=True):
        d = u.shape[-1]
        h = Dense(self.ffn_dim, self.method, "fc1", dtype=self.dtype, name="fc1")(u, deterministic)
        h = activation_fn(self.cfg.activation)(h)
        h = Dropout(self.cfg.activation_dropout)(h, deterministic=deterministic)
        f = Dense(d, self.method, "fc2", dtype=self.dtype, name="fc2")(h, deterministic)
        f = Dropout(self.cfg.dropout)(f, deterministic=deterministic)
        for term in self.method.adapters("ffn", "sequential"):
            f = f + Adapter(term, d, self.dtype, name="ffn_adapter")(f, deterministic)
        for term in self.method.adapters("ffn", "parallel"):  # bypasses the residual dropout
            f = f + Adapter(term, d, self.dtype, name="ffn_adapter")(x_parallel, deterministic)
        return f


class Layer(nn.Module):
    """One encoder layer, or a decoder layer when `cross` is set."""

    cfg: ArchConfig
    method: Method
    cross: bool = False
    decode: bool = False
    dtype: jnp.dtype = jnp.float32

    def _sublayer(self, h, fn, norm_name, deterministic):
        """Post-LN: LN(h + drop(fn(h))). Pre-LN: h + drop(fn(LN(h)))."""
        norm = LayerNorm(self.cfg.layer_norm_eps, self.method, name=norm_name)
        if self.cfg.pre_ln:
            return h + Dropout(self.cfg.dropout)(fn(norm(h)), deterministic=deterministic)
        return norm(h + Dropout(self.cfg.dropout)(fn(h), deterministic=deterministic))

    @nn.compact
    def __call__(self, h, self_bias, enc=None, enc_bias=None, prefixes=None,
                 deterministic=True):
        cfg = self.cfg
        heads = cfg.decoder_heads if self.cross else cfg.heads
        prefixes = prefixes or {}
        attn = lambda name, decode=False, cross=False: Attention(
            heads, self.method, dropout=cfg.attention_dropout, decode=decode, dtype=self.dtype,
            cross=cross, name=name)
        self_site = "decoder" if self.cross else "encoder"
        h = self._sublayer(
            h, lambda x: attn("self_attn", self.decode)(x, None, self_bias,
                                                        prefixes.get(self_site), deterministic),
            "self_attn_layer_norm", deterministic)
        if self.cross:
            h = self._sublayer(
                h, lambda x: attn("encoder_attn", self.decode, cross=True)(
                    x, enc, enc_bias, prefixes.get("cross"), deterministic),
                "encoder_attn_layer_norm", deterministic)
        ffn = FeedForward(cfg, cfg.decoder_ffn_dim if self.cross else cfg.ffn_dim, self.method,
                          self.dtype, name="ffn")
        norm = LayerNorm(cfg.layer_norm_eps, self.method, name="final_layer_norm")
        if cfg.pre_ln:
            return h + ffn(norm(h), h, deterministic)
        return norm(h + ffn(h, h, deterministic))


class Stack(nn.Module):
    """Embeddings + layers of the encoder (cross=False) or the decoder (cross=True).

    remat: the rematerialisation policy of each layer (unified_petl.models.remat; not
    applied when decoding with a cache)."""

    cfg: ArchConfig
    method: Method
    cross: bool = False
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, tokens_embedded, positions, mask, enc=None, enc_mask=None,
                 deterministic=True):
        cfg, method = self.cfg, self.method
        n_layers = cfg.decoder_layers if self.cross else cfg.encoder_layers
        pos_table = Embed(cfg.max_positions + POSITION_OFFSET, cfg.d_model, method,
                          name="embed_positions")
        h = tokens_embedded + pos_table(positions + POSITION_OFFSET).astype(tokens_embedded.dtype)
        if not self.cross and method.prompt is not None:  # prompts skip the positions
            prompt = delta_param(self, "prompt", normal(0.02), (method.prompt.size, cfg.d_model))
            b = h.shape[0]
            h = jnp.concatenate([jnp.broadcast_to(prompt.astype(h.dtype), (b,) + prompt.shape),
                                 h], axis=1)
            mask = jnp.concatenate([jnp.ones((b, prompt.shape[0]), mask.dtype), mask], axis=1)
        h = LayerNorm(cfg.layer_norm_eps, method, name="layernorm_embedding")(h)
        h = Dropout(cfg.dropout)(h, deterministic=deterministic)

        prefixes = {}
        if method.prefix is not None:
            sites = ("decoder", "cross") if self.cross else ("encoder",)
            for site in sites:
                prefixes[site] = PrefixSet(method.prefix, n_layers, cfg.d_model,
                                           name=f"prefix_{site}")()

        if self.cross:
            self_bias = None if self.decode else causal_bias(h.shape[1])
            if mask is not None and not self.decode:
                self_bias = self_bias + padding_bias(mask)
            enc_bias = padding_bias(enc_mask)
        else:
            self_bias, enc_bias = padding_bias(mask), None
        # deterministic is argument 6 of Layer.__call__ (self = 0): static under remat
        layer_cls = remat_layer(Layer, "none" if self.decode else self.remat, 6)
        for i in range(n_layers):
            layer_prefixes = {site: p[i] for site, p in prefixes.items()}
            h = layer_cls(cfg, method, self.cross, self.decode, self.dtype, name=f"layers_{i}")(
                h, self_bias, enc, enc_bias, layer_prefixes, deterministic)
        if cfg.pre_ln:
            h = LayerNorm(cfg.layer_norm_eps, method, name="layer_norm")(h)
        return h, mask


class BartForConditionalGeneration(nn.Module):
    """(m)BART with the tied LM head.

    __call__(input_ids [B, S], attention_mask [B, S], decoder_input_ids [B, T],
    decoder_attention_mask [B, T] | None, deterministic) -> Seq2SeqOutput.
    `encode` and `decode_logits` split the same computation for generation.

    decode=True (generation, see unified_petl.generate): the decoder keeps a preallocated
    `cache` collection: self-attention K/V (written one step at a time, the length of the
    first call's decoder_input_ids) and the cross-attention K/V (computed from `enc` on the
    first call; later calls pass enc=None). Prefixes are not cached. Pass `positions` on every
    call after the first (the default, arange(T), is right only for the first).

    remat: rematerialisation policy of every layer (unified_petl.models.remat.POLICIES).
    """

    cfg: ArchConfig
    method: Method = Method()
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"

    def setup(self):
        cfg = self.cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, self.method, name="shared")
        self.encoder = Stack(cfg, self.method, False, False, self.dtype, self.remat,
                             name="encoder")
        self.decoder = Stack(cfg, self.method, True, self.decode, self.dtype, self.remat,
                             name="decoder")
        self.embed_scale = cfg.d_model ** 0.5 if cfg.scale_embedding else 1.0
        self.final_logits_bias = frozen_param(self, "final_logits_bias", zeros,
                                              (cfg.vocab_size,), self.method.masked_patterns)

    def _embed(self, ids):
        # scaled in fp32 whatever the table's storage dtype (bf16 frozen weights)
        return (self.shared(ids).astype(jnp.float32) * self.embed_scale).astype(self.dtype)

    def encode(self, input_ids, attention_mask, deterministic=True):
        """-> encoder output [B, S(+l prompt), d], its mask [B, S(+l)]."""
        positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        return self.encoder(self._embed(input_ids), positions, attention_mask,
                            deterministic=deterministic)

    def decode_logits(self, decoder_input_ids, enc, enc_mask, decoder_attention_mask=None,
                      positions=None, deterministic=True):
        """-> (logits [B, T, V], decoder output [B, T, d])."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(decoder_input_ids.shape[1]),
                                         decoder_input_ids.shape)
        h, _ = self.decoder(self._embed(decoder_input_ids), positions, decoder_attention_mask,
                            enc, enc_mask, deterministic=deterministic)
        logits = self.shared.attend(h.astype(jnp.float32)) + self.final_logits_bias
        return logits, h

    def __call__(self, input_ids, attention_mask, decoder_input_ids,
                 decoder_attention_mask=None, deterministic=True):
        enc, enc_mask = self.encode(input_ids, attention_mask, deterministic)
        logits, h = self.decode_logits(decoder_input_ids, enc, enc_mask, decoder_attention_mask,
                                       deterministic=deterministic)
        return Seq2SeqOutput(logits=logits, last_hidden_state=h, encoder_last_hidden_state=enc,
                             encoder_attention_mask=enc_mask)
