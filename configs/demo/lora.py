"""LoRA (r=8, alpha=16) on the query and value projections of all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/lora.py --workdir /tmp/unified_petl_demo/lora
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from demo_common import demo_config  # noqa: E402


def get_config():
    return demo_config("lora(r=8)", lr=2e-3)
