"""WMT16 en-ro, paper Table 5 (6.1% of BART-large): scaled parallel FFN adapter r=512, s=4 (lora
init).

    unified-petl train --config configs/wmt_en_ro/scaled_pa_ffn_r512.py --workdir runs/enro_scaled_pa_ffn_r512

Method `scaled_pa(r=512, s=4)`; the en-ro settings are in enro_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from enro_common import row_config  # noqa: E402


def get_config():
    return row_config('scaled_pa_ffn_r512')
