"""MNLI / SST-2, paper Table 2: full fine-tuning.

    unified-petl train --config configs/glue/full.py:mnli --workdir runs/mnli_full
    unified-petl train --config configs/glue/full.py:sst2 --workdir runs/sst2_full

Method `full`; the GLUE settings are in glue_common.py.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from glue_common import row_config  # noqa: E402


def get_config(task="mnli"):
    return row_config('full', task)
