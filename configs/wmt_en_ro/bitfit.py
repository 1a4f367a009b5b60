"""WMT16 en-ro, paper Table 6 (0.1% of BART-large): BitFit: every bias.

    unified-petl train --config configs/wmt_en_ro/bitfit.py --workdir runs/enro_bitfit

Method `bitfit`; the en-ro settings are in enro_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from enro_common import row_config  # noqa: E402


def get_config():
    return row_config('bitfit')
