"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): prefix tuning, l=32.

    unified-petl train --config configs/glue/prefix.py:mnli --workdir runs/mnli_prefix
    unified-petl train --config configs/glue/prefix.py:sst2 --workdir runs/sst2_prefix
    unified-petl train --config configs/glue/prefix.py:mnli_1600 --workdir runs/mnli1600_prefix

Method `prefix(l=32)`; the GLUE settings are in glue_common.py
(mnli_1600: selection on the first 1600 matched-dev pairs, as the reference did).
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('prefix', task)
