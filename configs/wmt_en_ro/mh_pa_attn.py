"""WMT16 en-ro, paper Table 4 (3.6% of BART-large): multi-head parallel adapter, r=200.

    unified-petl train --config configs/wmt_en_ro/mh_pa_attn.py --workdir runs/enro_mh_pa_attn

Method `mh_pa(r=200)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mh_pa_attn')
