"""WMT16 en-ro, paper Table 6 (6.7% of BART-large): MAM adapter: prefix l=30 + scaled parallel FFN
adapter r=512, s=4.

    unified-petl train --config configs/wmt_en_ro/mam.py --workdir runs/enro_mam

Method `mam(l=30, r=512, s=4)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mam')
