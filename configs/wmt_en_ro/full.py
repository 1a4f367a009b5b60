"""WMT16 en-ro, paper Table 6: full fine-tuning.

    unified-petl train --config configs/wmt_en_ro/full.py --workdir runs/enro_full

Method `full`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('full')
