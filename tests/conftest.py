"""Shared fixtures: tiny random transformers models saved with save_pretrained (no network)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests never write into the user's compilation cache (~/.cache/unified-petl/jax); the CLI
# and the demo they run (in process or as subprocesses) compile without it.
os.environ["UNIFIED_PETL_COMPILE_CACHE"] = "0"
# As the CLI and the demo do, before JAX starts its threads (unified_petl.host_memory).
from unified_petl.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

import numpy as np
import pytest

TINY = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
            decoder_ffn_dim=37, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None,
            forced_eos_token_id=2)
TINY_ENCODER = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def tiny_hf_model(kind: str, *, classification: bool = False, seed: int = 0, layers: int = 2):
    """A tiny random transformers PyTorch model of `kind` (bart, mbart, roberta, bert)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind in ("bart", "mbart"):
        cls_cfg = tf.BartConfig if kind == "bart" else tf.MBartConfig
        extra = {} if kind == "bart" else {"scale_embedding": True}
        config = cls_cfg(**{**TINY, "encoder_layers": layers, "decoder_layers": layers},
                         **extra)
        model = (tf.BartForConditionalGeneration if kind == "bart"
                 else tf.MBartForConditionalGeneration)(config)
        with torch.no_grad():  # a non-zero final_logits_bias so the test sees it
            model.final_logits_bias.normal_()
    else:
        cfg_cls = tf.RobertaConfig if kind == "roberta" else tf.BertConfig
        config = cfg_cls(**{**TINY_ENCODER, "num_hidden_layers": layers}, num_labels=3,
                         pad_token_id=1 if kind == "roberta" else 0)
        if kind == "roberta":
            config.max_position_embeddings = 66
        if classification:
            model = (tf.RobertaForSequenceClassification if kind == "roberta"
                     else tf.BertForSequenceClassification)(config)
        else:
            model = (tf.RobertaModel if kind == "roberta" else tf.BertModel)(config)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """factory(kind, classification=False, layers=2) -> folder with a saved tiny model."""
    cache = {}

    def make(kind, classification=False, layers=2):
        key = (kind, classification, layers)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{kind}{'_cls' if classification else ''}{layers}")
            tiny_hf_model(kind, classification=classification, layers=layers).save_pretrained(
                folder)
            cache[key] = str(folder)
        return cache[key]

    return make


def padded_batch(rng: np.random.Generator, batch: int, length: int, vocab: int, pad: int,
                 *, min_len: int = 3):
    """Token ids [B, L] with a random amount of right padding and their mask."""
    ids = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    for i in range(batch):
        n = rng.integers(min_len, length + 1) if i else length
        ids[i, n:] = pad
        mask[i, n:] = 0
    return ids, mask
