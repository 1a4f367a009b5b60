"""XSum, paper Table 5 (6.1% of BART-large): scaled parallel FFN adapter r=512, s=4 (lora init).

    unified-petl train --config configs/xsum/scaled_pa_ffn_r512.py --workdir runs/xsum_scaled_pa_ffn_r512

Method `scaled_pa(r=512, s=4)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('scaled_pa_ffn_r512')
