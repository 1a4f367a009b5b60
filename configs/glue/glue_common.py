"""GLUE (MNLI, SST-2) settings of the paper (REFERENCE.md, experimental setups) and its rows.

Not a config itself: every other file in this folder is one method of the paper's GLUE table
(0.5% budget) and takes the task as its argument:

    unified-petl train --config configs/glue/mam.py:mnli --workdir runs/mnli_mam
    unified-petl train --config configs/glue/mam.py:sst2 --workdir runs/sst2_mam
    unified-petl train --config configs/glue/mam.py:mnli_1600 --workdir runs/mnli1600_mam

Settings (the reference code's exps/run_glue.sh, about lines 89-112 and its run_glue.py
command): roberta-base; AdamW lr 1e-4, betas (0.9, 0.98), eps 1e-6, linear warmup over 6% of
the steps then linear ("polynomial", power 1) decay to 1e-7 (transformers 4.9's lr_end); 32
sentences per step for 10 epochs (steps = 10 x floor(train size / 32): our stream drops the
last partial batch, the reference's loader kept it); weight decay 0.1; clipping 1.0; no label
smoothing; 512 tokens (the script passes --max_seq_length twice, 128 then 512; the last
wins); dropout 0.1 (the checkpoint's); seed 42 (the paper averages seeds 42, 2, 4, 6, 8);
mixed precision (bf16 here, fp16 there); a new classification head, trained and counted
apart (REFERENCE.md's default; the reference code left its random head frozen: add
head=false to the method for that).
Model selection: validation accuracy after every epoch. The task argument picks the
validation set it is measured on:
  mnli, sst2   the whole validation set (MNLI: validation_matched, 9,815 pairs; SST-2: 872);
  mnli_1600    MNLI on the first 1600 validation_matched pairs, as the reference selected
               (run_glue.py: eval_dataset.select(range(max_eval_samples)), max_eval_samples
               1600 in exps/run_glue.sh); score the selected Δh on the whole set afterwards
               with `unified-petl eval --config ... --workdir ... --best`.
(SST-2's 872 validation sentences are fewer than 1600, so the reference scored all of them.)

Row-specific settings (`ROW_OVERRIDES`): full fine-tuning uses lr 1e-5, the RoBERTa GLUE
recipe (fairseq examples/roberta/README.glue.md: --lr 1e-5 for MNLI and SST-2, with the same
32 sentences, 10 epochs, 6% warmup, weight decay 0.1, betas (0.9, 0.98), eps 1e-6; the
reference's run_glue.sh keeps "# lr=1e-5" as a commented alternative next to the PETL 1e-4),
not the PETL learning rate. Everything else stays as above (that recipe does not clip:
--clip-norm 0.0; we keep the reference script's 1.0).
Sizes: the paper gives 0.5% for every PETL row; MAM is l=16, r=16, s=2 and LoRA r=16; prefix
(l=32) and the adapter (Pfeiffer, r=32) are sized to the same 589,824 parameters (0.47%).
"""
from __future__ import annotations

import ml_collections

from unified_petl.train.config import base_config, override

BASE = "roberta-base"
TRAIN_SIZES = {"mnli": 392_702, "sst2": 67_349}
BATCH_SIZE = 32
EPOCHS = 10
# task argument -> (task, validation examples used for selection: 0 = all)
TASK_ARGS = {"mnli": ("mnli", 0), "sst2": ("sst2", 0), "mnli_1600": ("mnli", 1600)}

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


# row -> command-line overrides (--config.KEY=VALUE form) for that row only: full
# fine-tuning with the RoBERTa GLUE recipe's lr (fairseq examples/roberta/README.glue.md).
ROW_OVERRIDES: dict[str, tuple[str, ...]] = {
    "full": ("optim.lr=1e-5",),
}


def steps_per_epoch(task: str) -> int:
    return TRAIN_SIZES[task] // BATCH_SIZE


def row_config(row: str, task: str = "mnli") -> ml_collections.ConfigDict:
    """The GLUE config of one row of ROWS on `task` (mnli, sst2 or mnli_1600)."""
    if row not in ROWS:
        raise ValueError(f"unknown GLUE row {row!r}; choose one of {', '.join(ROWS)}")
    if task not in TASK_ARGS:
        raise ValueError(f"unknown GLUE task {task!r}; use {', '.join(TASK_ARGS)} "
                         f"(--config configs/glue/{row}.py:sst2)")
    task, eval_examples = TASK_ARGS[task]
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
    c.optim.end_lr = 1e-7  # transformers 4.9 polynomial schedule's lr_end
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.1
    c.optim.max_grad_norm = 1.0
    c.data.max_source_len = 512
    c.data.max_eval_examples = eval_examples
    c.data.eval_batch_size = 128
    c.model.num_labels = 0  # the task's: 3 for MNLI, 2 for SST-2
    c.model.pretrained_head = False
    c.eval.selection = "accuracy"
    return override(c, ROW_OVERRIDES.get(row, ()))
