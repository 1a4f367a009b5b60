"""XSum, paper Table 4: prefix l=30 without the gate λ (the '-gating' ablation).

    unified-petl train --config configs/xsum/prefix_nogate_l30.py --workdir runs/xsum_prefix_nogate_l30

Method `prefix_nogate(l=30)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix_nogate_l30')
