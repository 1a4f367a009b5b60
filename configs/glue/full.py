"""MNLI / SST-2, paper Table 2: full fine-tuning.

    unified-petl train --config configs/glue/full.py:mnli --workdir runs/mnli_full
    unified-petl train --config configs/glue/full.py:sst2 --workdir runs/sst2_full

Method `full`; the GLUE settings are in glue_common.py.
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('full', task)
