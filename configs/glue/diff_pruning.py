"""MNLI / SST-2: diff pruning (Guo, Rush, Kim, ACL 2021): the gated stage, the projection
to 0.5%, the fixed-mask stage.

    unified-petl train --config configs/glue/diff_pruning.py:mnli --workdir runs/mnli_diff_pruning
    unified-petl train --config configs/glue/diff_pruning.py:sst2 --workdir runs/sst2_diff_pruning
    unified-petl train --config configs/glue/diff_pruning.py:mnli_1600 \
        --workdir runs/mnli1600_diff_pruning

Method `diff_pruning(density=0.005, steps=..., ...)`: one config runs both stages; stage 1 in
WORKDIR/stage1, the projection in WORKDIR/mask.safetensors, stage 2 in WORKDIR (see
unified_petl.train.diff_pruning, which also lists where we differ from the authors).

The paper's settings and their sources are in sparse_common.py.
"""
from sparse_common import sparse_config  # settings of the gradient-masked methods


def get_config(task="mnli"):
    return sparse_config("diff_pruning", task)
