"""Prefix tuning (l=16 per layer, no reparameterisation MLP) on all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/prefix.py --workdir /tmp/unified_petl_demo/prefix
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("prefix(l=16, mlp=False)", lr=5e-3)
