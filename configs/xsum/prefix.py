"""XSum, paper Table 6 (3.6% of BART-large): prefix tuning, l=200.

    unified-petl train --config configs/xsum/prefix.py --workdir runs/xsum_prefix

Method `prefix(l=200)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('prefix')
