"""WMT16 en->ro settings of the paper (REFERENCE.md, experimental setups) and its rows.

Not a config itself: every other file in this folder is one row and calls
`row_config(<row name>)`. The rows are the XSum rows (configs/xsum/xsum_common.py `ROWS`):
the paper runs every method on both tasks and states one "% params" for both (of BART-large).

    unified-petl train --config configs/wmt_en_ro/mam.py --workdir runs/enro_mam

Settings (the reference code's exps/run_en_ro.sh): facebook/mbart-large-cc25; AdamW lr 5e-5,
betas (0.9, 0.98), eps 1e-6, linear decay to 0 with no warmup; batches of about 16k tokens
(the reference: 4096 tokens x 4 accumulation steps); 50k steps; label smoothing 0.1; weight
decay 0.01; clipping 1.0; source / target 150 tokens; dropout 0.1 with attention dropout 0.0;
mixed precision (bf16 here, fp16 there). Model selection: the loss on the first 1600
validation pairs, every 5000 steps (lowest is best). Decoding (test BLEU, with the
Romanian post-processing of unified_petl.evaluate.bleu): 5 beams, max length 150, length
penalty 1.0 (the reference script passed --max_length 200; the paper states 150).

max_tokens (token-budget batches: B * max(S, T) <= 16384 tokens per step; batch_size is
not used), base_overrides (attention_dropout=0.0), generate.* and eval.* are documented in
unified_petl.train.config.
"""
from __future__ import annotations

import os
import sys

import ml_collections

_XSUM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "xsum")
if os.path.abspath(_XSUM) not in sys.path:
    sys.path.insert(0, os.path.abspath(_XSUM))
from xsum_common import ROWS, generate_settings  # noqa: E402

from unified_petl.train.config import base_config  # noqa: E402

BASE = "facebook/mbart-large-cc25"
MAX_TOKENS = 16384

__all__ = ["ROWS", "BASE", "MAX_TOKENS", "row_config"]


def row_config(row: str) -> ml_collections.ConfigDict:
    """The WMT16 en-ro config of one row of ROWS."""
    if row not in ROWS:
        raise ValueError(f"unknown en-ro row {row!r}; choose one of {', '.join(ROWS)}")
    c = base_config()
    c.base = BASE
    c.task = "wmt16_en_ro"
    c.method = ROWS[row][0]
    c.seed = 42
    c.max_tokens = MAX_TOKENS
    c.batch_size = 256
    c.grad_accum = 1
    c.total_steps = 50_000
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 5000
    c.keep_checkpoints = 2
    c.label_smoothing = 0.1
    c.dtype = "bfloat16"
    c.optim.lr = 5e-5
    c.optim.warmup_steps = 0
    c.optim.end_lr = 0.0
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 1.0
    c.data.max_source_len = 150
    c.data.max_target_len = 150
    c.data.max_eval_examples = 1600
    c.data.eval_batch_size = 64
    c.base_overrides = ml_collections.ConfigDict(dict(attention_dropout=0.0))
    c.generate = generate_settings(num_beams=5, max_length=150, min_length=0,
                                   no_repeat_ngram_size=0, length_penalty=1.0,
                                   early_stopping=False)
    c.eval.selection = "loss"
    c.eval.generate = False
    c.eval.bleu_tokenize = "moses"  # exps/romanian_postprocess.sh: Moses tokens, -tok none
    return c
