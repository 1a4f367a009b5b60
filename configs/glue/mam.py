"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): MAM adapter: prefix l=16 + scaled parallel
FFN adapter r=16, s=2.

    unified-petl train --config configs/glue/mam.py:mnli --workdir runs/mnli_mam
    unified-petl train --config configs/glue/mam.py:sst2 --workdir runs/sst2_mam

Method `mam(l=16, r=16, s=2)`; the GLUE settings are in glue_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from glue_common import row_config  # noqa: E402


def get_config(task="mnli"):
    return row_config('mam', task)
