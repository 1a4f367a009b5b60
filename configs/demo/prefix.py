"""Prefix tuning (l=16 per layer, no reparameterisation MLP) on all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/prefix.py --workdir /tmp/unified_petl_demo/prefix
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from demo_common import demo_config  # noqa: E402


def get_config():
    return demo_config("prefix(l=16, mlp=False)", lr=5e-3)
