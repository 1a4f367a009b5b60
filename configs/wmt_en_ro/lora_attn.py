"""WMT16 en-ro, paper Table 4: LoRA on q/v, r=200, s=2 (attention vs FFN at a large budget).

    unified-petl train --config configs/wmt_en_ro/lora_attn.py --workdir runs/enro_lora_attn

Method `lora(at=attn, r=200, alpha=400, dropout=0.1)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('lora_attn')
