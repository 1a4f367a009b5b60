"""MAM adapter on all-MiniLM-L6-v2, demo task: prefix l=16 + scaled parallel FFN adapter r=64.

1.6 % of MiniLM's parameters (the paper's GLUE sizes, l=16, r=16, s=2, are 0.7 % of MiniLM
and were about a point less accurate in an earlier, one-epoch version of this demo). The
prefix is trained directly (mlp=False): the 800-wide reparameterisation MLP alone would be
17 % of MiniLM's parameters.

    unified-petl train --config configs/demo/mam.py --workdir /tmp/unified_petl_demo/mam
"""
from demo_common import demo_config  # shared settings of this folder


def get_config():
    return demo_config("mam(l=16, r=64, s=4, mlp=False)", lr=1e-3)
