"""WMT16 en->ro settings of the paper (REFERENCE.md, experimental setups) and its rows.

Not a config itself: every other file in this folder is one row and calls
`row_config(<row name>)`. The rows are the XSum rows (configs/xsum/xsum_common.py `ROWS`):
the paper runs every method on both tasks and states one "% params" for both (of BART-large).

    unified-petl train --config configs/wmt_en_ro/mam.py --workdir runs/enro_mam

Settings (the reference code's exps/run_en_ro.sh, about lines 57-85 and its
run_translation.py command): facebook/mbart-large-cc25; AdamW lr 5e-5, betas (0.9, 0.98),
eps 1e-6, linear ("polynomial", power 1) decay to 1e-7 (transformers 4.9's lr_end) with no
warmup; batches of about 16k tokens (the reference: max_tokens_per_batch 4096 x 4
accumulation steps); 50k steps; label smoothing 0.1; weight decay 0.01; clipping 1.0;
source / target 150 tokens; dropout 0.1 with attention dropout 0.0; seed 42; mixed precision
(bf16 here, fp16 there). Model selection: the label-smoothed loss (`loss_smoothed`, lowest
is best) on the first 1600 validation pairs, every 5000 steps: the reference's
--metric_for_best_model loss is the eval loss its Seq2SeqTrainer computes with the
LabelSmoother (trainer_seq2seq.py, about lines 180-185). Decoding (test BLEU, with the
Romanian post-processing of unified_petl.evaluate.bleu): 5 beams, max length 150, min length
1 (a no-op: the decoder start token already counts), no n-gram blocking, length penalty 1.0,
no early stopping. run_translation.py decodes the test set with
max_length=val_max_target_length (150); the script's --max_length 200 only applies to the
BLEU it logs during training, which selects nothing (we do not decode during training:
eval.generate=false).

Row-specific settings (`ROW_OVERRIDES`, applied after the shared ones): the prefix-tuning
row trains with label smoothing 0 and weight decay 0, the values exps/run_en_ro.sh (about
lines 60-63) says "the prefix tuning baseline prefers". The comment names only that
baseline (Table 6's prefix, l=200); the Table 4 prefix rows (l=30) keep 0.1 / 0.01.

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

from unified_petl.train.config import base_config, override  # noqa: E402

BASE = "facebook/mbart-large-cc25"
MAX_TOKENS = 16384

# row -> command-line overrides (the --config.KEY=VALUE form) the reference used for that row
# only. exps/run_en_ro.sh, about lines 60-63: "the prefix tuning baseline prefers the
# commented hyperparam: label_smoothing_factor=0, weight_decay=0".
ROW_OVERRIDES: dict[str, tuple[str, ...]] = {
    "prefix": ("label_smoothing=0.0", "optim.weight_decay=0.0"),
}

__all__ = ["ROWS", "ROW_OVERRIDES", "BASE", "MAX_TOKENS", "row_config"]


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
    c.optim.end_lr = 1e-7  # transformers 4.9 polynomial schedule's lr_end
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 1.0
    c.data.max_source_len = 150
    c.data.max_target_len = 150
    c.data.max_eval_examples = 1600
    c.data.eval_batch_size = 64
    c.base_overrides = ml_collections.ConfigDict(dict(attention_dropout=0.0))
    c.generate = generate_settings(num_beams=5, max_length=150, min_length=1,
                                   no_repeat_ngram_size=0, length_penalty=1.0,
                                   early_stopping=False)
    c.eval.selection = "loss_smoothed"
    c.eval.generate = False
    c.eval.bleu_tokenize = "moses"  # exps/romanian_postprocess.sh: Moses tokens, -tok none
    return override(c, ROW_OVERRIDES.get(row, ()))
