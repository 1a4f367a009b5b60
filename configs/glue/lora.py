"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): LoRA on query/value, r=16.

    unified-petl train --config configs/glue/lora.py:mnli --workdir runs/mnli_lora
    unified-petl train --config configs/glue/lora.py:sst2 --workdir runs/sst2_lora
    unified-petl train --config configs/glue/lora.py:mnli_1600 --workdir runs/mnli1600_lora

Method `lora(at=attn, r=16, alpha=32, dropout=0.1)`; the GLUE settings are in glue_common.py
(mnli_1600: selection on the first 1600 matched-dev pairs, as the reference did).
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('lora', task)
