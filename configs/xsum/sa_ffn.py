"""XSum, paper Table 3 (2.4% of BART-large): sequential adapter at the FFN, r=200.

    unified-petl train --config configs/xsum/sa_ffn.py --workdir runs/xsum_sa_ffn

Method `sa(at=ffn, r=200)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('sa_ffn')
