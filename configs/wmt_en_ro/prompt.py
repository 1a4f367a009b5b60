"""WMT16 en-ro, paper Table 6 (0.1% of BART-large): prompt tuning, l=200 (formula: 0.05%).

    unified-petl train --config configs/wmt_en_ro/prompt.py --workdir runs/enro_prompt

Method `prompt(l=200)`; the en-ro settings are in enro_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from enro_common import row_config  # noqa: E402


def get_config():
    return row_config('prompt')
