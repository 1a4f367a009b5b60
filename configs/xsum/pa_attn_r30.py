"""XSum, paper Table 4: parallel adapter at attention, r=30.

    unified-petl train --config configs/xsum/pa_attn_r30.py --workdir runs/xsum_pa_attn_r30

Method `pa(at=attn, r=30)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_attn_r30')
