"""WMT16 en-ro, paper Table 6 (7.2% of BART-large): Pfeiffer adapter (sequential FFN), r=600.

    unified-petl train --config configs/wmt_en_ro/pfeiffer.py --workdir runs/enro_pfeiffer

Method `pfeiffer(r=600)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pfeiffer')
