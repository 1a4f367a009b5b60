"""Full fine-tuning of all-MiniLM-L6-v2 (every weight and the new head), demo task.

    unified-petl train --config configs/demo/full.py --workdir /tmp/unified_petl_demo/full
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("full", lr=1e-4)
