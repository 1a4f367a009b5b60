"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): MAM adapter: prefix l=16 + scaled parallel
FFN adapter r=16, s=2.

    unified-petl train --config configs/glue/mam.py:mnli --workdir runs/mnli_mam
    unified-petl train --config configs/glue/mam.py:sst2 --workdir runs/sst2_mam
    unified-petl train --config configs/glue/mam.py:mnli_1600 --workdir runs/mnli1600_mam

Method `mam(l=16, r=16, s=2)`; the GLUE settings are in glue_common.py
(mnli_1600: selection on the first 1600 matched-dev pairs, as the reference did).
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('mam', task)
