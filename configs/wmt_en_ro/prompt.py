"""WMT16 en-ro, paper Table 6 (0.1% of BART-large): prompt tuning, l=200 (formula: 0.05%).

    unified-petl train --config configs/wmt_en_ro/prompt.py --workdir runs/enro_prompt

Method `prompt(l=200)`; the en-ro settings are in enro_common.py.
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prompt')
