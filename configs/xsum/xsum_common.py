"""XSum settings of the paper (REFERENCE.md, experimental setups) and its rows.

Not a config itself: every other file in this folder is one row of the paper's tables and
calls `row_config(<row name>)`. `ROWS` lists them all (tests/test_configs.py checks that each
row has its file and each file its row). The same rows serve WMT16 en-ro
(configs/wmt_en_ro/enro_common.py reads `ROWS` from here).

Run one row:

    unified-petl train --config configs/xsum/mam.py --workdir runs/xsum_mam

Settings (the reference code's exps/run_xsum.sh, about lines 142-159 and its
run_summarization.py command): facebook/bart-large; AdamW lr 5e-5, default betas/eps, linear
("polynomial", power 1) decay to 1e-7 (transformers 4.9's lr_end) with no warmup; 64
documents per step (the reference ran 16 x 4 gradient accumulation on one GPU: use
--config.grad_accum=4 on a small GPU); 100k steps; label smoothing 0.1; weight decay 0.01
(not on biases / LayerNorms); global-norm clipping 0.1; source 512 / target 128 tokens
(validation and test targets 60, the task's default); dropout 0.1 (the checkpoint's); seed
42; mixed precision (the reference used fp16; we compute in bf16, Δh and Adam stay fp32).
Model selection: ROUGE-2 of beam-search summaries of the first 1600 validation documents,
every 3000 steps. Decoding: 6 beams, min length 10, max length 60, no repeated trigrams,
length penalty 1.0, early stopping (facebook/bart-large's generation defaults, which the
reference's transformers 4.9 read from the checkpoint). No row has settings of its own
(`ROW_OVERRIDES` is empty): exps/run_xsum.sh uses one set for every method.
"""
from __future__ import annotations

import ml_collections

from unified_petl.train.config import GENERATE_DEFAULTS, base_config, override

# name -> (method preset, paper table, paper's "% params" (None: not stated for this row or
# stated differently from the formula, see the note), what the row is).
# Percentages are of BART-large (the paper states one figure for XSum and en-ro).
ROWS: dict[str, tuple[str, str, "float | None", str]] = {
    # Table 6 (and Figure 2): the baselines and the MAM adapter.
    "full": ("full", "6", None, "full fine-tuning"),
    "bitfit": ("bitfit", "6", 0.1, "BitFit: every bias"),
    "prompt": ("prompt(l=200)", "6", 0.1, "prompt tuning, l=200 (formula: 0.05%)"),
    "prefix": ("prefix(l=200)", "6", 3.6, "prefix tuning, l=200"),
    "pfeiffer": ("pfeiffer(r=600)", "6", 7.2, "Pfeiffer adapter (sequential FFN), r=600"),
    "lora_ffn": ("lora(at=ffn, r=102, alpha=408, dropout=0.1)", "6", 6.1,
                 "LoRA on fc1/fc2, r=102, s=4"),
    "lora_attn": ("lora(at=attn, r=200, alpha=400, dropout=0.1)", "4", None,
                  "LoRA on q/v, r=200, s=2 (attention vs FFN at a large budget)"),
    "pa_ffn_r1024": ("pa(at=ffn, r=1024)", "6", 12.3, "parallel adapter at the FFN, r=1024"),
    "mam": ("mam(l=30, r=512, s=4)", "6", 6.7,
            "MAM adapter: prefix l=30 + scaled parallel FFN adapter r=512, s=4"),
    # Table 6: the other combinations of an attention term and a 512 FFN adapter.
    "pa_attn30_pa_ffn512": ("pa(at=attn, r=30) + pa(at=ffn, r=512)", "6", 6.7,
                            "parallel adapters at attention (r=30) and FFN (r=512)"),
    "mh_pa30_pa_ffn512": ("mh_pa(r=30) + pa(at=ffn, r=512)", "6", 6.7,
                          "multi-head PA (r=30) + parallel FFN adapter (r=512)"),
    "prefix30_pa_ffn512": ("prefix(l=30) + pa(at=ffn, r=512)", "6", 6.7,
                           "prefix l=30 + parallel FFN adapter r=512 (MAM without the scale)"),
    # Table 3: sequential vs parallel insertion, at attention vs FFN.
    "sa_attn": ("sa(at=attn, r=200)", "3", 3.6, "sequential adapter at attention, r=200"),
    "sa_ffn": ("sa(at=ffn, r=200)", "3", 2.4, "sequential adapter at the FFN, r=200"),
    "pa_attn": ("pa(at=attn, r=200)", "3", 3.6, "parallel adapter at attention, r=200"),
    "pa_ffn": ("pa(at=ffn, r=200)", "3", 2.4, "parallel adapter at the FFN, r=200"),
    # Table 4: which representation (attention vs FFN; multi-head vs single-head).
    # The paper lists the r/l=30 rows as 0.1%; its own formula gives 0.54% (see note).
    "mh_pa_attn": ("mh_pa(r=200)", "4", 3.6, "multi-head parallel adapter, r=200"),
    "prefix_l30": ("prefix(l=30)", "4", None, "prefix tuning, l=30"),
    "prefix_nogate_l30": ("prefix_nogate(l=30)", "4", None,
                          "prefix l=30 without the gate λ (the '-gating' ablation)"),
    "mh_pa_attn_r30": ("mh_pa(r=30)", "4", None, "multi-head parallel adapter, r=30"),
    "pa_attn_r30": ("pa(at=attn, r=30)", "4", None, "parallel adapter at attention, r=30"),
    "pa_ffn_r30": ("pa(at=ffn, r=30)", "4", None, "parallel adapter at the FFN, r=30"),
    # Table 5: composition functions (add vs scaled).
    "pa_ffn_r512": ("pa(at=ffn, r=512)", "5", 6.1, "parallel FFN adapter r=512, add (s=1)"),
    "scaled_pa_ffn_r512": ("scaled_pa(r=512, s=4)", "5", 6.1,
                           "scaled parallel FFN adapter r=512, s=4 (lora init)"),
    "lora_ffn_s1": ("lora(at=ffn, r=102, alpha=102, dropout=0.1)", "5", 6.1,
                    "LoRA on fc1/fc2, r=102, s=1 (the unscaled ablation)"),
}

BASE = "facebook/bart-large"

# row -> command-line overrides (--config.KEY=VALUE form) for that row only; none on XSum.
ROW_OVERRIDES: dict[str, tuple[str, ...]] = {}

# The trainer's generate.* (decoding settings) and eval.* (selection metric, decode at every
# evaluation) groups are documented in unified_petl.train.config.


def generate_settings(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({**GENERATE_DEFAULTS, **kw})


def row_config(row: str) -> ml_collections.ConfigDict:
    """The XSum config of one row of ROWS."""
    if row not in ROWS:
        raise ValueError(f"unknown XSum row {row!r}; choose one of {', '.join(ROWS)}")
    c = base_config()
    c.base = BASE
    c.task = "xsum"
    c.method = ROWS[row][0]
    c.seed = 42
    c.batch_size = 64
    c.grad_accum = 1
    c.total_steps = 100_000
    c.log_every = 100
    c.eval_every = 3000
    c.checkpoint_every = 3000
    c.keep_checkpoints = 2
    c.label_smoothing = 0.1
    c.dtype = "bfloat16"
    c.optim.lr = 5e-5
    c.optim.warmup_steps = 0
    c.optim.end_lr = 1e-7  # transformers 4.9 polynomial schedule's lr_end
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 0.1
    c.data.max_source_len = 512
    c.data.max_target_len = 0  # the task's: 128 for training, 60 for validation
    c.data.max_eval_examples = 1600  # paper: selection on the first 1600 validation examples
    c.data.eval_batch_size = 64
    c.generate = generate_settings(num_beams=6, min_length=10, max_length=60,
                                   no_repeat_ngram_size=3, length_penalty=1.0,
                                   early_stopping=True)
    c.eval.selection = "rouge2"
    c.eval.generate = True  # ROUGE-2 needs decoded summaries at every evaluation
    return override(c, ROW_OVERRIDES.get(row, ()))
