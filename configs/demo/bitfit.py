"""BitFit (every bias, LayerNorm biases included) on all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/bitfit.py --workdir /tmp/unified_petl_demo/bitfit
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from demo_common import demo_config  # noqa: E402


def get_config():
    return demo_config("bitfit", lr=5e-3)
