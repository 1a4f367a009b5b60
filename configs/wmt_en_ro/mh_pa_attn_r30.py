"""WMT16 en-ro, paper Table 4: multi-head parallel adapter, r=30.

    unified-petl train --config configs/wmt_en_ro/mh_pa_attn_r30.py --workdir runs/enro_mh_pa_attn_r30

Method `mh_pa(r=30)`; the en-ro settings are in enro_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from enro_common import row_config  # noqa: E402


def get_config():
    return row_config('mh_pa_attn_r30')
