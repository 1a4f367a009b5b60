"""XSum, paper Table 4: prefix tuning, l=30.

    unified-petl train --config configs/xsum/prefix_l30.py --workdir runs/xsum_prefix_l30

Method `prefix(l=30)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix_l30')
