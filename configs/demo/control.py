"""Control: MAM on a RANDOMLY INITIALISED encoder with MiniLM's architecture, demo task.

Same settings as mam.py; without pretrained knowledge the held-out words cannot be labelled,
so accuracy stays near chance.

    unified-petl train --config configs/demo/control.py --workdir /tmp/unified_petl_demo/control
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("mam(l=16, r=64, s=4, mlp=False)", lr=1e-3, random_init=True)
