"""WMT16 en-ro, paper Table 6 (12.3% of BART-large): parallel adapter at the FFN, r=1024.

    unified-petl train --config configs/wmt_en_ro/pa_ffn_r1024.py --workdir runs/enro_pa_ffn_r1024

Method `pa(at=ffn, r=1024)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_ffn_r1024')
