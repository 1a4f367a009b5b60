"""MNLI / SST-2, paper Table 2: full fine-tuning.

    unified-petl train --config configs/glue/full.py:mnli --workdir runs/mnli_full
    unified-petl train --config configs/glue/full.py:sst2 --workdir runs/sst2_full
    unified-petl train --config configs/glue/full.py:mnli_1600 --workdir runs/mnli1600_full

Method `full`; the GLUE settings are in glue_common.py
(mnli_1600: selection on the first 1600 matched-dev pairs, as the reference did), except the
learning rate: 1e-5, the RoBERTa GLUE recipe's for MNLI and SST-2 (fairseq
examples/roberta/README.glue.md), not the PETL rows' 1e-4 (glue_common.ROW_OVERRIDES).
"""
from glue_common import row_config  # shared settings of this folder


def get_config(task="mnli"):
    return row_config('full', task)
