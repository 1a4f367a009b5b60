"""MNLI / SST-2, paper Table 2 (0.1% of RoBERTa-base): BitFit: every bias (formula: 0.08%).

    unified-petl train --config configs/glue/bitfit.py:mnli --workdir runs/mnli_bitfit
    unified-petl train --config configs/glue/bitfit.py:sst2 --workdir runs/sst2_bitfit
    unified-petl train --config configs/glue/bitfit.py:mnli_1600 --workdir runs/mnli1600_bitfit

Method `bitfit`; the GLUE settings are in glue_common.py
(mnli_1600: selection on the first 1600 matched-dev pairs, as the reference did).
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('bitfit', task)
