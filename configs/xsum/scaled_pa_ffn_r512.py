"""XSum, paper Table 5 (6.1% of BART-large): scaled parallel FFN adapter r=512, s=4 (lora init).

    unified-petl train --config configs/xsum/scaled_pa_ffn_r512.py --workdir runs/xsum_scaled_pa_ffn_r512

Method `scaled_pa(r=512, s=4)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('scaled_pa_ffn_r512')
