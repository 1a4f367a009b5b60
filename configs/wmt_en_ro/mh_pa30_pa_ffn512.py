"""WMT16 en-ro, paper Table 6 (6.7% of BART-large): multi-head PA (r=30) + parallel FFN adapter
(r=512).

    unified-petl train --config configs/wmt_en_ro/mh_pa30_pa_ffn512.py --workdir runs/enro_mh_pa30_pa_ffn512

Method `mh_pa(r=30) + pa(at=ffn, r=512)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('mh_pa30_pa_ffn512')
