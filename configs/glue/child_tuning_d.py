"""MNLI / SST-2: Child-Tuning_D (Xu et al., EMNLP 2021), full fine-tuning with a fixed
Fisher gradient mask (p_D = 0.3).

    unified-petl train --config configs/glue/child_tuning_d.py:mnli --workdir runs/mnli_child_d
    unified-petl train --config configs/glue/child_tuning_d.py:sst2 --workdir runs/sst2_child_d
    unified-petl train --config configs/glue/child_tuning_d.py:mnli_1600 \
        --workdir runs/mnli1600_child_d

Method `child_tuning(mode=D, p=0.3, num_examples=1024)`: the top 30% of the encoder layers'
weights by Fisher information (unified_petl.train.child_tuning says where we follow the
authors' ChildTuningAdamW and where the Fisher estimate differs).

The paper's settings and their sources are in sparse_common.py.
"""
from sparse_common import sparse_config  # settings of the gradient-masked methods


def get_config(task="mnli"):
    return sparse_config("child_tuning_d", task)
