"""RoBERTa (and BERT-family) encoder in Flax, matching transformers' PyTorch models.

RoBERTa: padding-aware position ids starting at pad_token_id + 1. BERT: position ids from 0,
token_type_ids. Post-LN layers. Parameter names mirror transformers' with three renames that
flatten the attention block (see `loading.HF_RENAMES`):
attention.self.{query,key,value} -> attention/{query,key,value}, attention.output.dense ->
attention/out, attention.output.LayerNorm -> attention_LayerNorm, intermediate.dense ->
intermediate, output.dense -> output, output.LayerNorm -> output_LayerNorm.

Heads: RoBERTa-style (dropout, dense, tanh, dropout, out_proj on <s>) and BERT-style (pooler
dense + tanh on [CLS], dropout, classifier). A head that is new for the task lives in the
`delta` collection (trained and counted separately); a head loaded from a checkpoint stays in
`params`.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from unified_petl.delta.adapter import Adapter
from unified_petl.delta.prefix import PrefixSet
from unified_petl.delta.spec import Method
from unified_petl.delta.variables import normal, zeros
from unified_petl.models.config import ArchConfig, activation_fn
from unified_petl.models.dropout import Dropout
from unified_petl.models.layers import Attention, Dense, Embed, LayerNorm, padding_bias
from unified_petl.models.remat import remat_layer

BERT_NAMES = ("query", "key", "value", "out")


@flax.struct.dataclass
class EncoderOutput:
    logits: Optional[jax.Array]  # [B, num_labels] or None without a head
    last_hidden_state: jax.Array  # [B, L, d]


def roberta_position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """transformers' create_position_ids_from_input_ids: pads keep pad_id, tokens count on."""
    mask = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_token_id


class EncoderLayer(nn.Module):
    cfg: ArchConfig
    method: Method
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, bias, prefix=None, deterministic=True):
        cfg, method, d = self.cfg, self.method, self.cfg.d_model
        drop = lambda x: Dropout(cfg.dropout)(x, deterministic=deterministic)
        attn = Attention(cfg.heads, method, BERT_NAMES, cfg.attention_dropout, dtype=self.dtype,
                         name="attention")(h, None, bias, prefix, deterministic)
        a = LayerNorm(cfg.layer_norm_eps, method, name="attention_LayerNorm")(h + drop(attn))
        f = Dense(cfg.ffn_dim, method, "fc1", dtype=self.dtype, name="intermediate")(
            a, deterministic)
        f = Dense(d, method, "fc2", dtype=self.dtype, name="output")(
            activation_fn(cfg.activation)(f), deterministic)
        f = drop(f)
        for term in method.adapters("ffn", "sequential"):
            f = f + Adapter(term, d, self.dtype, name="ffn_adapter")(f, deterministic)
        for term in method.adapters("ffn", "parallel"):  # input: the attention output
            f = f + Adapter(term, d, self.dtype, name="ffn_adapter")(a, deterministic)
        return LayerNorm(cfg.layer_norm_eps, method, name="output_LayerNorm")(a + f)


class HeadDense(nn.Module):
    """A task-head linear layer whose weights live in `params` (from a checkpoint, frozen)
    or in `delta` (new for the task; N(0, 0.02) weights and zero bias, as transformers)."""

    features: int
    pretrained: bool

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.features)
        if self.pretrained:
            kernel = self.param("kernel", normal(0.02), shape)
            bias = self.param("bias", zeros, (self.features,))
        else:
            kernel = self.variable("delta", "kernel", lambda: normal(0.02)(
                self.make_rng("params"), shape)).value
            bias = self.variable("delta", "bias", jnp.zeros, (self.features,)).value
        return x.astype(jnp.float32) @ kernel + bias


class RobertaModel(nn.Module):
    """Encoder with an optional sequence-classification head.

    __call__(input_ids [B, L], attention_mask [B, L], token_type_ids [B, L] | None,
    deterministic) -> EncoderOutput(logits [B, num_labels] | None, last_hidden_state [B, L, d]).
    num_labels=0: no head. pretrained_head: the head's weights come from the checkpoint.
    pooling: what the head reads: "cls" (the first token, as transformers' heads) or "mean"
    (the mean over real tokens, as sentence-transformers trains its encoders; BERT's
    CLS pooler is then skipped and the head is one new linear layer).
    remat: rematerialisation policy of every layer (unified_petl.models.remat.POLICIES).
    """

    cfg: ArchConfig
    method: Method = Method()
    num_labels: int = 0
    pretrained_head: bool = False
    pooling: str = "cls"
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        cfg, method = self.cfg, self.method
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        h = self._embed(input_ids, token_type_ids, deterministic)
        bias = padding_bias(attention_mask)
        prefixes = None
        if method.prefix is not None:
            prefixes = PrefixSet(method.prefix, cfg.encoder_layers, cfg.d_model,
                                 name="prefix_encoder")()
        # deterministic is argument 4 of EncoderLayer.__call__ (self = 0): static under remat
        layer_cls = remat_layer(EncoderLayer, self.remat, 4)
        for i in range(cfg.encoder_layers):
            h = layer_cls(cfg, method, self.dtype, name=f"encoder_layer_{i}")(
                h, bias, None if prefixes is None else prefixes[i], deterministic)
        logits = self._head(h, attention_mask, deterministic) if self.num_labels else None
        return EncoderOutput(logits=logits, last_hidden_state=h)

    def _embed(self, input_ids, token_type_ids, deterministic):
        cfg, method = self.cfg, self.method
        words = Embed(cfg.vocab_size, cfg.d_model, method, name="embeddings_word_embeddings")
        positions = Embed(cfg.max_positions, cfg.d_model, method,
                          name="embeddings_position_embeddings")
        if cfg.kind == "bert":
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        else:
            position_ids = roberta_position_ids(input_ids, cfg.pad_token_id)
        # fp32 sums whatever the tables' storage dtype (bf16 frozen weights, frozen_dtype)
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        h = f32(words(input_ids)) + f32(positions(position_ids))
        if cfg.type_vocab_size:
            types = Embed(cfg.type_vocab_size, cfg.d_model, method,
                          name="embeddings_token_type_embeddings")
            h = h + f32(types(jnp.zeros_like(input_ids) if token_type_ids is None
                              else token_type_ids))
        h = LayerNorm(cfg.layer_norm_eps, method, name="embeddings_LayerNorm")(h)
        return Dropout(cfg.dropout)(h, deterministic=deterministic).astype(self.dtype)

    def _head(self, h, attention_mask, deterministic):
        cfg = self.cfg
        drop = lambda x: Dropout(cfg.classifier_dropout)(x, deterministic=deterministic)
        if self.pooling == "mean":
            mask = attention_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
            mean = (h.astype(jnp.float32) * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
            return HeadDense(self.num_labels, self.pretrained_head, name="classifier")(
                drop(mean))
        first = h[:, 0].astype(jnp.float32)
        if cfg.kind == "bert":  # the pooler is part of the pretrained body
            pooled = jnp.tanh(Dense(cfg.d_model, self.method, name="pooler_dense")(first))
            return HeadDense(self.num_labels, self.pretrained_head, name="classifier")(
                drop(pooled))
        x = HeadDense(cfg.d_model, self.pretrained_head, name="classifier_dense")(drop(first))
        return HeadDense(self.num_labels, self.pretrained_head, name="classifier_out_proj")(
            drop(jnp.tanh(x)))
