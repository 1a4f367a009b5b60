"""Control: MAM on a RANDOMLY INITIALISED encoder with MiniLM's architecture, demo task.

Same settings as mam.py; without pretrained knowledge the held-out words cannot be labelled,
so accuracy stays near chance.

    unified-petl train --config configs/demo/control.py --workdir /tmp/unified_petl_demo/control
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from demo_common import demo_config  # noqa: E402


def get_config():
    return demo_config("mam(l=16, r=16, s=2, mlp=False)", lr=2e-3, random_init=True)
