"""WMT16 en-ro, paper Table 3 (3.6% of BART-large): parallel adapter at attention, r=200.

    unified-petl train --config configs/wmt_en_ro/pa_attn.py --workdir runs/enro_pa_attn

Method `pa(at=attn, r=200)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_attn')
