"""WMT16 en-ro, paper Table 6 (6.1% of BART-large): LoRA on fc1/fc2, r=102, s=4.

    unified-petl train --config configs/wmt_en_ro/lora_ffn.py --workdir runs/enro_lora_ffn

Method `lora(at=ffn, r=102, alpha=408, dropout=0.1)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('lora_ffn')
