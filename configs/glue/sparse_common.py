"""MNLI / SST-2 with the gradient-masked fine-tuning methods, each with ITS paper's settings.

Not a config itself: fish.py, child_tuning_d.py, child_tuning_f.py and diff_pruning.py take the
task as their argument (mnli, sst2 or mnli_1600, as the other rows of this folder):

    unified-petl train --config configs/glue/fish.py:sst2 --workdir runs/sst2_fish

These are not rows of the unified-view paper's Table 2 (glue_common.ROWS): each follows the
paper and code it comes from, on the base model that paper used, so that its own numbers are
the reference. The task plumbing (datasets, the validation set, selection on accuracy after
every epoch, evaluation batch size) is glue_common.row_config's; everything the method's
authors set is replaced here. What their scripts leave at transformers' defaults is written
out: AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0, clipping 1.0, linear decay to 0.
To compare with the unified view's rows at their settings instead, override:
`--config.base=roberta-base --config.optim.lr=1e-4 ...` (with RoBERTa's 592k-parameter head
a FISH budget of 0.5% leaves 31k weights: add head_in_budget=false to the method).

- FISH (Sung, Nair, Raffel, NeurIPS 2021; GitHub varunnair18/FISH, transformers/examples/
  text-classification/scripts/run_table_1.sh -> run_sparse_updates.sh, lib.sh):
  bert-large-cased-whole-word-masking, keep_ratio 0.005, mask_num_samples 1024, mask method
  label-square (the squared gradient of the true label's log-likelihood), learning rate 5e-5,
  batch 16 (lib.sh; RTE 8), 7 epochs, max_seq_length 128, seed 0, fp32.
- Child-Tuning (Xu et al., EMNLP 2021; GitHub alibaba/AliceMind, ChildTuning/run.sh):
  bert-large-cased, reserve_p 0.3 (the script's default for both modes), learning rate 4e-5,
  batch 16, 3 epochs, warmup ratio 0.1, weight decay 0.01, max_seq_length 128, seed 42.
- Diff pruning (Guo, Rush, Kim, ACL 2021; GitHub dguo98/DiffPruning, experiments/
  example_sst2.sh and the argparse defaults of examples/run_glue_diffpruning.py,
  run_glue_fixmask_finetune.py): bert-large-cased-whole-word-masking, batch 8, max_seq_length
  128, seed 0; stage 1 (gated): learning rate 1e-5, 3 epochs, sparsity_pen 1.25e-7, concrete
  (-1.5, 1.5), temperature 1, alpha_init 5, alpha learning rate 0.1, per-parameter gates on
  (--per_params_alpha 1: structured); projection to 0.5% (--target_sparsity 0.005); stage 2
  (fixed mask): learning rate 5e-5 (the fix-mask script's default), 3 epochs.
"""
from __future__ import annotations

import ml_collections

from glue_common import TRAIN_SIZES, row_config  # shared task settings of this folder

BERT_LARGE_WWM = "bert-large-cased-whole-word-masking"
BERT_LARGE = "bert-large-cased"

# name -> (method preset, base, learning rate, batch, epochs, seed, what the row is)
ROWS: dict[str, tuple] = {
    "fish": ("fish(density=0.005, num_examples=1024)", BERT_LARGE_WWM, 5e-5, 16, 7, 0,
             "FISH mask: 0.5% of the weights by Fisher information of 1024 examples"),
    "child_tuning_d": ("child_tuning(mode=D, p=0.3, num_examples=1024)", BERT_LARGE, 4e-5,
                       16, 3, 42, "Child-Tuning_D: a fixed Fisher mask of 30% of the layers"),
    "child_tuning_f": ("child_tuning(mode=F, p=0.3)", BERT_LARGE, 4e-5, 16, 3, 42,
                       "Child-Tuning_F: a fresh Bernoulli(0.3) gradient mask every step"),
    "diff_pruning": ("diff_pruning(density=0.005, steps=STAGE1, lr=5e-5, l0=1.25e-7, "
                     "lower=-1.5, upper=1.5, beta=1.0, alpha_init=5, alpha_lr=0.1, "
                     "structured=true)", BERT_LARGE_WWM, 1e-5, 8, 6, 0,
                     "diff pruning: 3 gated epochs, projection to 0.5%, 3 fixed-mask epochs"),
}


def sparse_config(row: str, task: str = "mnli") -> ml_collections.ConfigDict:
    """The config of one row of ROWS on `task` (mnli, sst2 or mnli_1600)."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; choose one of {', '.join(ROWS)}")
    method, base, lr, batch, epochs, seed, _ = ROWS[row]
    c = row_config("full", task)  # the task plumbing of this folder
    epoch = TRAIN_SIZES[c.task] // batch
    c.base = base
    c.method = method.replace("STAGE1", str(3 * epoch))  # diff pruning: 3 of the 6 epochs
    c.seed = seed
    c.batch_size = batch
    c.total_steps = epochs * epoch
    c.eval_every = c.checkpoint_every = epoch
    c.dtype = "float32"
    c.optim.lr = lr
    c.optim.warmup_steps = 0
    c.optim.warmup_ratio = 0.1 if row.startswith("child_tuning") else 0.0
    c.optim.end_lr = 0.0  # transformers' linear schedule of their scripts decays to 0
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
    c.optim.weight_decay = 0.01 if row.startswith("child_tuning") else 0.0
    c.optim.max_grad_norm = 1.0
    c.data.max_source_len = 128
    return c
