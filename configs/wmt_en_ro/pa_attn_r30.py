"""WMT16 en-ro, paper Table 4: parallel adapter at attention, r=30.

    unified-petl train --config configs/wmt_en_ro/pa_attn_r30.py --workdir runs/enro_pa_attn_r30

Method `pa(at=attn, r=30)`; the en-ro settings are in enro_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from enro_common import row_config  # noqa: E402


def get_config():
    return row_config('pa_attn_r30')
