"""XSum, paper Table 6 (0.1% of BART-large): BitFit: every bias.

    unified-petl train --config configs/xsum/bitfit.py --workdir runs/xsum_bitfit

Method `bitfit`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('bitfit')
