"""XSum, paper Table 6 (6.7% of BART-large): parallel adapters at attention (r=30) and FFN
(r=512).

    unified-petl train --config configs/xsum/pa_attn30_pa_ffn512.py --workdir runs/xsum_pa_attn30_pa_ffn512

Method `pa(at=attn, r=30) + pa(at=ffn, r=512)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_attn30_pa_ffn512')
