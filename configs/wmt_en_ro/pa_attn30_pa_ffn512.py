"""WMT16 en-ro, paper Table 6 (6.7% of BART-large): parallel adapters at attention (r=30) and FFN
(r=512).

    unified-petl train --config configs/wmt_en_ro/pa_attn30_pa_ffn512.py --workdir runs/enro_pa_attn30_pa_ffn512

Method `pa(at=attn, r=30) + pa(at=ffn, r=512)`; the en-ro settings are in enro_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from enro_common import row_config  # noqa: E402


def get_config():
    return row_config('pa_attn30_pa_ffn512')
