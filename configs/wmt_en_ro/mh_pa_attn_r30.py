"""WMT16 en-ro, paper Table 4: multi-head parallel adapter, r=30.

    unified-petl train --config configs/wmt_en_ro/mh_pa_attn_r30.py --workdir runs/enro_mh_pa_attn_r30

Method `mh_pa(r=30)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mh_pa_attn_r30')
