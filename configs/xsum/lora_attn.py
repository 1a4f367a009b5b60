"""XSum, paper Table 4: LoRA on q/v, r=200, s=2 (attention vs FFN at a large budget).

    unified-petl train --config configs/xsum/lora_attn.py --workdir runs/xsum_lora_attn

Method `lora(at=attn, r=200, alpha=400, dropout=0.1)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('lora_attn')
