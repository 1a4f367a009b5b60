"""WMT16 en-ro, paper Table 6 (3.6% of BART-large): prefix tuning, l=200.

    unified-petl train --config configs/wmt_en_ro/prefix.py --workdir runs/enro_prefix

Method `prefix(l=200)`; the en-ro settings are in enro_common.py, except label smoothing 0
and weight decay 0, which the reference preferred for this baseline (exps/run_en_ro.sh,
about lines 60-63; enro_common.ROW_OVERRIDES).
"""
from enro_common import row_config  # shared settings of this folder


def get_config():
    return row_config('prefix')
