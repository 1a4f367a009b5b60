"""MNLI / SST-2: the FISH mask (Sung, Nair, Raffel, NeurIPS 2021), 0.5% of the weights chosen
by the Fisher information of 1024 training examples.

    unified-petl train --config configs/glue/fish.py:mnli --workdir runs/mnli_fish
    unified-petl train --config configs/glue/fish.py:sst2 --workdir runs/sst2_fish
    unified-petl train --config configs/glue/fish.py:mnli_1600 --workdir runs/mnli1600_fish

Method `fish(density=0.005, num_examples=1024)` = `sparse(mask=fisher)`: the trainer computes the
mask before the first step (unified_petl.train.fisher; WORKDIR/mask.safetensors) and trains
the chosen weights and the new head (inside the 0.5% budget, as FISH). To reuse one mask:

    unified-petl mask --config configs/glue/fish.py:sst2 --criterion fisher --density 0.005 \
        --num-examples 1024 --out runs/sst2_fish.mask.safetensors
    unified-petl train --config configs/glue/fish.py:sst2 --workdir runs/sst2_fish_file \
        "--config.method=sparse(mask=file, path='runs/sst2_fish.mask.safetensors')"

The paper's settings and their sources are in sparse_common.py.
"""
from sparse_common import sparse_config  # settings of the gradient-masked methods


def get_config(task="mnli"):
    return sparse_config("fish", task)
