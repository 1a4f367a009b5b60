"""LoRA (r=8, alpha=16) on the query and value projections of all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/lora.py --workdir /tmp/unified_petl_demo/lora
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("lora(r=8)", lr=2e-3)
