"""XSum, paper Table 6 (7.2% of BART-large): Pfeiffer adapter (sequential FFN), r=600.

    unified-petl train --config configs/xsum/pfeiffer.py --workdir runs/xsum_pfeiffer

Method `pfeiffer(r=600)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pfeiffer')
