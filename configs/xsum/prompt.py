"""XSum, paper Table 6 (0.1% of BART-large): prompt tuning, l=200 (formula: 0.05%).

    unified-petl train --config configs/xsum/prompt.py --workdir runs/xsum_prompt

Method `prompt(l=200)`; the XSum settings are in xsum_common.py.
"""
from xsum_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prompt')
