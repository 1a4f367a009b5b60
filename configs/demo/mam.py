"""MAM adapter on all-MiniLM-L6-v2, demo task: prefix (l=16) + scaled parallel FFN adapter (r=16, s=2).

The paper's GLUE MAM (l=16, r=16, s=2); the prefix is trained directly (mlp=False): the
800-wide reparameterisation MLP alone would be 17 % of MiniLM's parameters.

    unified-petl train --config configs/demo/mam.py --workdir /tmp/unified_petl_demo/mam
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the loader runs this file by path: make its helper importable
    sys.path.insert(0, _HERE)
from demo_common import demo_config  # noqa: E402


def get_config():
    return demo_config("mam(l=16, r=16, s=2, mlp=False)", lr=2e-3)
