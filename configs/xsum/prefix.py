"""XSum, paper Table 6 (3.6% of BART-large): prefix tuning, l=200.

    unified-petl train --config configs/xsum/prefix.py --workdir runs/xsum_prefix

Method `prefix(l=200)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix')
