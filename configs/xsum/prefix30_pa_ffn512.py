"""XSum, paper Table 6 (6.7% of BART-large): prefix l=30 + parallel FFN adapter r=512 (MAM without
the scale).

    unified-petl train --config configs/xsum/prefix30_pa_ffn512.py --workdir runs/xsum_prefix30_pa_ffn512

Method `prefix(l=30) + pa(at=ffn, r=512)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix30_pa_ffn512')
