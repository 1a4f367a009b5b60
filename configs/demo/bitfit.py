"""BitFit (every bias, LayerNorm biases included) on all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/bitfit.py --workdir /tmp/unified_petl_demo/bitfit
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("bitfit", lr=5e-3)
