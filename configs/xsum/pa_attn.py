"""XSum, paper Table 3 (3.6% of BART-large): parallel adapter at attention, r=200.

    unified-petl train --config configs/xsum/pa_attn.py --workdir runs/xsum_pa_attn

Method `pa(at=attn, r=200)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_attn')
