"""XSum, paper Table 5 (6.1% of BART-large): parallel FFN adapter r=512, add (s=1).

    unified-petl train --config configs/xsum/pa_ffn_r512.py --workdir runs/xsum_pa_ffn_r512

Method `pa(at=ffn, r=512)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_ffn_r512')
