"""XSum, paper Table 6 (6.7% of BART-large): multi-head PA (r=30) + parallel FFN adapter (r=512).

    unified-petl train --config configs/xsum/mh_pa30_pa_ffn512.py --workdir runs/xsum_mh_pa30_pa_ffn512

Method `mh_pa(r=30) + pa(at=ffn, r=512)`; the XSum settings are in xsum_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from xsum_common import row_config  # noqa: E402


def get_config():
    return row_config('mh_pa30_pa_ffn512')
