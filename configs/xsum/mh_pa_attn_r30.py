"""XSum, paper Table 4: multi-head parallel adapter, r=30.

    unified-petl train --config configs/xsum/mh_pa_attn_r30.py --workdir runs/xsum_mh_pa_attn_r30

Method `mh_pa(r=30)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('mh_pa_attn_r30')
