"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): prefix tuning, l=32.

    unified-petl train --config configs/glue/prefix.py:mnli --workdir runs/mnli_prefix
    unified-petl train --config configs/glue/prefix.py:sst2 --workdir runs/sst2_prefix

Method `prefix(l=32)`; the GLUE settings are in glue_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from glue_common import row_config  # noqa: E402


def get_config(task="mnli"):
    return row_config('prefix', task)
