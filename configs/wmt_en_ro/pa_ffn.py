"""WMT16 en-ro, paper Table 3 (2.4% of BART-large): parallel adapter at the FFN, r=200.

    unified-petl train --config configs/wmt_en_ro/pa_ffn.py --workdir runs/enro_pa_ffn

Method `pa(at=ffn, r=200)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_ffn')
