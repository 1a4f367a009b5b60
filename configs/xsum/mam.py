"""XSum, paper Table 6 (6.7% of BART-large): MAM adapter: prefix l=30 + scaled parallel FFN
adapter r=512, s=4.

    unified-petl train --config configs/xsum/mam.py --workdir runs/xsum_mam

Method `mam(l=30, r=512, s=4)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mam')
