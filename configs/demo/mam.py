"""MAM adapter on all-MiniLM-L6-v2, demo task: prefix (l=16) + scaled parallel FFN adapter (r=16, s=2).

The paper's GLUE MAM (l=16, r=16, s=2); the prefix is trained directly (mlp=False): the
800-wide reparameterisation MLP alone would be 17 % of MiniLM's parameters.

    unified-petl train --config configs/demo/mam.py --workdir /tmp/unified_petl_demo/mam
"""
from unified_petl.demo import demo_config


def get_config():
    return demo_config("mam(l=16, r=16, s=2, mlp=False)", lr=2e-3)
