"""XSum, paper Table 6 (6.1% of BART-large): LoRA on fc1/fc2, r=102, s=4.

    unified-petl train --config configs/xsum/lora_ffn.py --workdir runs/xsum_lora_ffn

Method `lora(at=ffn, r=102, alpha=408, dropout=0.1)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('lora_ffn')
