"""GLUE (MNLI, SST-2) settings of the paper (REFERENCE.md, experimental setups) and its rows.

Not a config itself: every other file in this folder is one method of the paper's GLUE table
(0.5% budget) and takes the task as its argument:

    unified-petl train --config configs/glue/mam.py:mnli --workdir runs/mnli_mam
    unified-petl train --config configs/glue/mam.py:sst2 --workdir runs/sst2_mam

Settings (the reference code's exps/run_glue.sh): roberta-base; AdamW lr 1e-4, betas
(0.9, 0.98), eps 1e-6, linear warmup over 6% of the steps then linear decay to 0; 32 sentences
per step for 10 epochs (steps = 10 x floor(train size / 32): our stream drops the last
partial batch); weight decay 0.1; clipping 1.0; no label smoothing; 512 tokens; mixed
precision (bf16 here, fp16 there); a new classification head, trained and counted apart
(REFERENCE.md's default; the reference code left its random head frozen).
Model selection: validation accuracy after every epoch; the score is on the whole validation
set (MNLI: matched), not the first 1600 examples the reference script evaluated on.
Sizes: the paper gives 0.5% for every PETL row; MAM is l=16, r=16, s=2 and LoRA r=16; prefix
(l=32) and the adapter (Pfeiffer, r=32) are sized to the same 589,824 parameters (0.47%).
"""
from __future__ import annotations

import ml_collections

from unified_petl.train.config import base_config

BASE = "roberta-base"
TRAIN_SIZES = {"mnli": 392_702, "sst2": 67_349}
BATCH_SIZE = 32
EPOCHS = 10

# name -> (method preset, paper's "% params" (None: full fine-tuning), what the row is).
ROWS: dict[str, tuple[str, "float | None", str]] = {
    "full": ("full", None, "full fine-tuning"),
    "bitfit": ("bitfit", 0.1, "BitFit: every bias (formula: 0.08%)"),
    "prefix": ("prefix(l=32)", 0.5, "prefix tuning, l=32"),
    "lora": ("lora(at=attn, r=16, alpha=32, dropout=0.1)", 0.5, "LoRA on query/value, r=16"),
    "adapter": ("pfeiffer(r=32)", 0.5, "Pfeiffer adapter (sequential FFN), r=32"),
    "mam": ("mam(l=16, r=16, s=2)", 0.5,
            "MAM adapter: prefix l=16 + scaled parallel FFN adapter r=16, s=2"),
}


def steps_per_epoch(task: str) -> int:
    return TRAIN_SIZES[task] // BATCH_SIZE


def row_config(row: str, task: str = "mnli") -> ml_collections.ConfigDict:
    """The GLUE config of one row of ROWS on `task` (mnli or sst2)."""
    if row not in ROWS:
        raise ValueError(f"unknown GLUE row {row!r}; choose one of {', '.join(ROWS)}")
    if task not in TRAIN_SIZES:
        raise ValueError(f"unknown GLUE task {task!r}; use {' or '.join(TRAIN_SIZES)} "
                         f"(--config configs/glue/{row}.py:sst2)")
    epoch = steps_per_epoch(task)
    c = base_config()
    c.base = BASE
    c.task = task
    c.method = ROWS[row][0]
    c.seed = 42
    c.batch_size = BATCH_SIZE
    c.grad_accum = 1
    c.total_steps = EPOCHS * epoch  # mnli 122,710; sst2 21,040
    c.log_every = 50
    c.eval_every = epoch
    c.checkpoint_every = epoch
    c.keep_checkpoints = 2
    c.label_smoothing = 0.0
    c.dtype = "bfloat16"
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.warmup_ratio = 0.06
    c.optim.end_lr = 0.0
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.1
    c.optim.max_grad_norm = 1.0
    c.data.max_source_len = 512
    c.data.max_eval_examples = 0
    c.data.eval_batch_size = 128
    c.model.num_labels = 0  # the task's: 3 for MNLI, 2 for SST-2
    c.model.pretrained_head = False
    c.eval.selection = "accuracy"
    return c
