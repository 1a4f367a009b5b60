"""WMT16 en-ro, paper Table 4: prefix tuning, l=30.

    unified-petl train --config configs/wmt_en_ro/prefix_l30.py --workdir runs/enro_prefix_l30

Method `prefix(l=30)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix_l30')
