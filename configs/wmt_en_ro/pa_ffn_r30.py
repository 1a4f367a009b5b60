"""WMT16 en-ro, paper Table 4: parallel adapter at the FFN, r=30.

    unified-petl train --config configs/wmt_en_ro/pa_ffn_r30.py --workdir runs/enro_pa_ffn_r30

Method `pa(at=ffn, r=30)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_ffn_r30')
