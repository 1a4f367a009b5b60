"""XSum, paper Table 6 (12.3% of BART-large): parallel adapter at the FFN, r=1024.

    unified-petl train --config configs/xsum/pa_ffn_r1024.py --workdir runs/xsum_pa_ffn_r1024

Method `pa(at=ffn, r=1024)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_ffn_r1024')
