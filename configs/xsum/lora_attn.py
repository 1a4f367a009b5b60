"""XSum, paper Table 4: LoRA on q/v, r=200, s=2 (attention vs FFN at a large budget).

    unified-petl train --config configs/xsum/lora_attn.py --workdir runs/xsum_lora_attn

Method `lora(at=attn, r=200, alpha=400, dropout=0.1)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('lora_attn')
