"""Scaled parallel adapter on the FFN (r=16, s=2, LoRA init) of all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/pa.py --workdir /tmp/unified_petl_demo/pa
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from demo_common import demo_config  # noqa: E402


def get_config():
    return demo_config("pa(r=16, s=2, init=lora)", lr=2e-3)
