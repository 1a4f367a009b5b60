"""XSum, paper Table 6 (6.7% of BART-large): parallel adapters at attention (r=30) and FFN
(r=512).

    unified-petl train --config configs/xsum/pa_attn30_pa_ffn512.py --workdir runs/xsum_pa_attn30_pa_ffn512

Method `pa(at=attn, r=30) + pa(at=ffn, r=512)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('pa_attn30_pa_ffn512')
