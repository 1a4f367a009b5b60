"""WMT16 en-ro, paper Table 5 (6.1% of BART-large): parallel FFN adapter r=512, add (s=1).

    unified-petl train --config configs/wmt_en_ro/pa_ffn_r512.py --workdir runs/enro_pa_ffn_r512

Method `pa(at=ffn, r=512)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('pa_ffn_r512')
