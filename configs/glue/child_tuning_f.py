"""MNLI / SST-2: Child-Tuning_F (Xu et al., EMNLP 2021), full fine-tuning with a
Bernoulli(p_F = 0.3) gradient mask.

    unified-petl train --config configs/glue/child_tuning_f.py:mnli --workdir runs/mnli_child_f
    unified-petl train --config configs/glue/child_tuning_f.py:sst2 --workdir runs/sst2_child_f
    unified-petl train --config configs/glue/child_tuning_f.py:mnli_1600 \
        --workdir runs/mnli1600_child_f

Method `child_tuning(mode=F, p=0.3)`: every step a fresh mask drawn from the step's key,
kept gradients scaled by 1/p (unified_petl.train.child_tuning).

The paper's settings and their sources are in sparse_common.py.
"""
from sparse_common import sparse_config  # settings of the gradient-masked methods


def get_config(task="mnli"):
    return sparse_config("child_tuning_f", task)
