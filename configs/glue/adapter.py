"""MNLI / SST-2, paper Table 2 (0.5% of RoBERTa-base): Pfeiffer adapter (sequential FFN), r=32.

    unified-petl train --config configs/glue/adapter.py:mnli --workdir runs/mnli_adapter
    unified-petl train --config configs/glue/adapter.py:sst2 --workdir runs/sst2_adapter
    unified-petl train --config configs/glue/adapter.py:mnli_1600 --workdir runs/mnli1600_adapter

Method `pfeiffer(r=32)`; the GLUE settings are in glue_common.py
(mnli_1600: selection on the first 1600 matched-dev pairs, as the reference did).
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('adapter', task)
