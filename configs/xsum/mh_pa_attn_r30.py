"""XSum, paper Table 4: multi-head parallel adapter, r=30.

    unified-petl train --config configs/xsum/mh_pa_attn_r30.py --workdir runs/xsum_mh_pa_attn_r30

Method `mh_pa(r=30)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mh_pa_attn_r30')
