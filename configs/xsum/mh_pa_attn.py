"""XSum, paper Table 4 (3.6% of BART-large): multi-head parallel adapter, r=200.

    unified-petl train --config configs/xsum/mh_pa_attn.py --workdir runs/xsum_mh_pa_attn

Method `mh_pa(r=200)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mh_pa_attn')
