"""Architecture settings read from a transformers config, as a hashable dataclass for Flax."""
from __future__ import annotations

import dataclasses
from typing import Any

SEQ2SEQ = ("bart", "mbart")
ENCODERS = ("roberta", "bert", "xlm-roberta")


class UnsupportedModelError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """The shape and behaviour of a base model.

    kind: bart | mbart | roberta | bert. pre_ln: mBART's pre-LayerNorm layers with a final
    encoder / decoder LayerNorm. position_offset: BART's learned positions start at 2;
    RoBERTa's at pad_token_id + 1 (padding-aware); BERT's at 0.
    """

    kind: str
    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    decoder_heads: int
    ffn_dim: int
    decoder_ffn_dim: int
    activation: str
    dropout: float
    attention_dropout: float
    activation_dropout: float
    max_positions: int
    pad_token_id: int
    layer_norm_eps: float
    scale_embedding: bool = False
    pre_ln: bool = False
    type_vocab_size: int = 0
    num_labels: int = 2
    classifier_dropout: float = 0.1

    @property
    def seq2seq(self) -> bool:
        return self.kind in SEQ2SEQ

    @property
    def max_source_positions(self) -> int:
        """Longest input the position table allows (RoBERTa loses pad_id + 1 slots)."""
        if self.kind in ("roberta", "xlm-roberta"):
            return self.max_positions - self.pad_token_id - 1
        return self.max_positions


def arch_config(config: Any) -> ArchConfig:
    """transformers PretrainedConfig (or an ArchConfig) -> ArchConfig."""
    if isinstance(config, ArchConfig):
        return config
    kind = getattr(config, "model_type", None)
    if kind in SEQ2SEQ:
        return ArchConfig(
            kind=kind, vocab_size=config.vocab_size, d_model=config.d_model,
            encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers,
            heads=config.encoder_attention_heads, decoder_heads=config.decoder_attention_heads,
            ffn_dim=config.encoder_ffn_dim, decoder_ffn_dim=config.decoder_ffn_dim,
            activation=config.activation_function, dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            max_positions=config.max_position_embeddings, pad_token_id=config.pad_token_id,
            layer_norm_eps=1e-5, scale_embedding=bool(config.scale_embedding),
            pre_ln=kind == "mbart", num_labels=getattr(config, "num_labels", 2))
    if kind in ENCODERS:
        dropout = getattr(config, "classifier_dropout", None)
        return ArchConfig(
            kind="roberta" if kind == "xlm-roberta" else kind, vocab_size=config.vocab_size,
            d_model=config.hidden_size, encoder_layers=config.num_hidden_layers,
            decoder_layers=0, heads=config.num_attention_heads, decoder_heads=0,
            ffn_dim=config.intermediate_size, decoder_ffn_dim=0,
            activation=config.hidden_act, dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob, activation_dropout=0.0,
            max_positions=config.max_position_embeddings,
            pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
            layer_norm_eps=config.layer_norm_eps, type_vocab_size=config.type_vocab_size,
            num_labels=getattr(config, "num_labels", 2),
            classifier_dropout=config.hidden_dropout_prob if dropout is None else dropout)
    raise UnsupportedModelError(
        f"unsupported model_type {kind!r}: unified-petl builds bart, mbart, roberta and bert "
        "checkpoints")


def activation_fn(name: str):
    import jax

    table = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
             "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
             "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
             "relu": jax.nn.relu, "tanh": jax.numpy.tanh, "silu": jax.nn.silu,
             "swish": jax.nn.silu}
    if name not in table:
        raise UnsupportedModelError(f"unsupported activation {name!r}; known: {sorted(table)}")
    return table[name]
