"""WMT16 en-ro, paper Table 4: prefix l=30 without the gate λ (the '-gating' ablation).

    unified-petl train --config configs/wmt_en_ro/prefix_nogate_l30.py --workdir runs/enro_prefix_nogate_l30

Method `prefix_nogate(l=30)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix_nogate_l30')
