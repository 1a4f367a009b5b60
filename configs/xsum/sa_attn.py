"""XSum, paper Table 3 (3.6% of BART-large): sequential adapter at attention, r=200.

    unified-petl train --config configs/xsum/sa_attn.py --workdir runs/xsum_sa_attn

Method `sa(at=attn, r=200)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('sa_attn')
