"""WMT16 en-ro, paper Table 6 (6.7% of BART-large): parallel adapters at attention (r=30) and FFN
(r=512).

    unified-petl train --config configs/wmt_en_ro/pa_attn30_pa_ffn512.py --workdir runs/enro_pa_attn30_pa_ffn512

Method `pa(at=attn, r=30) + pa(at=ffn, r=512)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_attn30_pa_ffn512')
