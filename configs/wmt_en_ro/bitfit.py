"""WMT16 en-ro, paper Table 6 (0.1% of BART-large): BitFit: every bias.

    unified-petl train --config configs/wmt_en_ro/bitfit.py --workdir runs/enro_bitfit

Method `bitfit`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('bitfit')
