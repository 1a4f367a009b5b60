"""XSum, paper Table 3 (2.4% of BART-large): sequential adapter at the FFN, r=200.

    unified-petl train --config configs/xsum/sa_ffn.py --workdir runs/xsum_sa_ffn

Method `sa(at=ffn, r=200)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('sa_ffn')
