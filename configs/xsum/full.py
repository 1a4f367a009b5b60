"""XSum, paper Table 6: full fine-tuning.

    unified-petl train --config configs/xsum/full.py --workdir runs/xsum_full

Method `full`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('full')
