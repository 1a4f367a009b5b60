"""Scaled parallel adapter on the FFN (r=16, s=2, LoRA init) of all-MiniLM-L6-v2, demo task.

    unified-petl train --config configs/demo/pa.py --workdir /tmp/unified_petl_demo/pa
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("pa(r=16, s=2, init=lora)", lr=2e-3)
