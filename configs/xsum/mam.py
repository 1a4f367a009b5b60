"""XSum, paper Table 6 (6.7% of BART-large): MAM adapter: prefix l=30 + scaled parallel FFN
adapter r=512, s=4.

    unified-petl train --config configs/xsum/mam.py --workdir runs/xsum_mam

Method `mam(l=30, r=512, s=4)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('mam')
