"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): LoRA on query/value, r=16.

    unified-petl train --config configs/glue/lora.py:mnli --workdir runs/mnli_lora
    unified-petl train --config configs/glue/lora.py:sst2 --workdir runs/sst2_lora

Method `lora(at=attn, r=16, alpha=32, dropout=0.1)`; the GLUE settings are in glue_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from glue_common import row_config  # noqa: E402


def get_config(task="mnli"):
    return row_config('lora', task)
