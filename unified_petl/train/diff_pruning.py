"""Diff pruning in one config: the gated stage, the magnitude projection, the fixed-mask stage.

    unified-petl train --config configs/glue/diff_pruning.py:sst2 --workdir runs/sst2_diff

config.method = "diff_pruning(density=0.005, steps=S, ...)" with total_steps = S + S2
(Guo, Rush, Kim, ACL 2021; the authors' three scripts, GitHub dguo98/DiffPruning,
experiments/example_sst2.sh: run_glue_diffpruning.py, run_glue_mag.py,
run_glue_fixmask_finetune.py):

1. stage 1, WORKDIR/stage1: `diff_gates(...)` for S steps: W + z ⊙ w with hard-concrete
   gates and the expected-L0 penalty (unified_petl.delta.diff_pruning), the new head dense;
2. projection: ẑ ⊙ w with the test-time gates, the top k by magnitude over all candidate
   weights, k = round(density × (weights + head)) - head (the authors' run_glue_mag.py
   searches a threshold on |Δ| of all parameters, the classifier's dense difference
   included); written as the mask WORKDIR/mask.safetensors (criterion "diff_pruning") and
   the stage-2 start WORKDIR/stage2_init.safetensors (save_delta format): the kept ẑ ⊙ w
   values and the stage-1 head;
3. stage 2, WORKDIR: `sparse(mask=file)` on that mask for S2 steps from that start, at
   learning rate `lr` (0: optim.lr; the authors' fix-mask script defaults to 5e-5 where
   stage 1 used 1e-5), the same optimiser settings otherwise.
Where we differ from the authors' scripts: they project the difference of the last stage-1
checkpoint, whose gates were SAMPLED at its last step, and start stage 2 from w (not z ⊙ w)
at the kept positions (run_glue_fixmask_finetune.py, --finetune 1 copies bert_params[n][1]);
we use the deterministic test-time gates for both, so the projection is a function of the
trained stage-1 Δh and stage 2 starts from the model the projection describes. Their
threshold search can keep fewer than k differences when many are exactly 0; top-k keeps k.

Every piece resumes: each stage is an ordinary run with its own checkpoints (stage 1 in
WORKDIR/stage1, stage 2 in WORKDIR), the projection is written atomically once stage 1 has
finished and reused afterwards, so `train` on a workdir stopped anywhere continues in the
right stage and ends with the same Δh as an uninterrupted run.
"""
from __future__ import annotations

import copy
import json
import os
import re
from typing import Callable, Sequence

import jax
import numpy as np
from flax import traverse_util

from unified_petl import masks as masks_lib
from unified_petl.delta import sparse as sparse_lib
from unified_petl.delta.diff_pruning import gated_delta
from unified_petl.delta.spec import SpecError, parse_method

STAGE1 = "stage1"
INIT_FILE = "stage2_init.safetensors"
_NAME = re.compile(r"^\s*diff_pruning\s*(\(|$)")


def is_two_stage(config) -> bool:
    """Whether config.method is `diff_pruning(...)` (both stages), not a single run."""
    return isinstance(config.method, str) and bool(_NAME.match(config.method))


def _term(config):
    term = parse_method(config.method).diff
    if term.steps < 1 or term.steps >= int(config.total_steps):
        raise SpecError(f"diff_pruning steps={term.steps} must be in [1, total_steps="
                        f"{config.total_steps}): stage 1 trains `steps` steps, stage 2 the "
                        "rest of total_steps")
    return term


def stage1_config(config, workdir: str):
    """(config, workdir) of the gated stage: `diff_gates(...)` for `steps` steps."""
    term = _term(config)
    c = copy.deepcopy(config)
    c.method = _NAME.sub(lambda m: "diff_gates" + m.group(1), config.method, count=1)
    c.total_steps = term.steps
    c.save_delta = True  # the projection reads the final stage-1 Δh
    return c, os.path.join(workdir, STAGE1)


def stage2_config(config, workdir: str):
    """The config of the fixed-mask stage (in `workdir` itself); needs the projection."""
    term = _term(config)
    mask_path = os.path.join(os.path.abspath(workdir), "mask.safetensors")
    c = copy.deepcopy(config)
    head = "" if parse_method(config.method).train_head else ", head=false"
    c.method = (f"sparse(density={term.density!r}, mask=file, path='{mask_path}', "
                f"head_in_budget={str(term.head_in_budget).lower()}{head})")
    c.total_steps = int(config.total_steps) - term.steps
    if term.lr:
        c.optim.lr = term.lr
    c.delta_init = os.path.join(os.path.abspath(workdir), INIT_FILE)
    return c


def project(config, workdir: str, base) -> str:
    """Write the mask and the stage-2 start from the finished stage 1 (once); the mask's path.
    base: the loaded config.base (random_init re-initialises it here, as the stages do)."""
    from unified_petl.train.checkpoint import load_delta, save_delta
    from unified_petl.train.setup import build_run, load_base

    mask_path = os.path.join(workdir, "mask.safetensors")
    init_path = os.path.join(workdir, INIT_FILE)
    if os.path.isfile(mask_path) and os.path.isfile(init_path):
        return mask_path
    term = _term(config)
    stage1_file = os.path.join(workdir, STAGE1, "delta.safetensors")
    if not os.path.isfile(stage1_file):
        raise FileNotFoundError(f"{stage1_file} is missing: stage 1 did not finish; run train "
                                "on this workdir again")
    run_base = load_base(config, base)
    _, delta = load_delta(stage1_file, run_base)
    values = {p: np.asarray(v) for p, v in gated_delta(term, delta).items()}
    flat = traverse_util.flatten_dict(delta, sep="/")
    head = {p: np.asarray(v) for p, v in flat.items() if p.split("/", 1)[0].startswith(
        "classifier")}
    method = parse_method(config.method)
    head_size = sum(v.size for v in head.values()) if (method.train_head
                                                        and term.head_in_budget) else 0
    mask = masks_lib.from_scores({p: np.abs(v) for p, v in values.items()},
                                 fingerprint=run_base.fingerprint, criterion="diff_pruning",
                                 density=term.density, how="global", head=head_size,
                                 pattern=term.pattern)
    if jax.process_index() == 0:
        mask.save(mask_path)  # atomic; the init file is written last and marks completion
        config2 = stage2_config(config, workdir)
        config2.delta_init = ""  # being written
        model = build_run(config2, base, workdir=workdir).model
        start = dict(head)
        for path, idx in mask.indices().items():
            start[path + sparse_lib.VALUES] = values[path].reshape(-1)[idx]
            start[path + sparse_lib.INDEX] = idx
        tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in start.items()})
        save_delta(init_path, model, tree, run_base)
    return mask_path


def train(config, workdir: str, *, base=None,
          hooks: Sequence[Callable[[int, object], None]] = ()) -> dict:
    """Both stages in `workdir` (see the module docstring); the stage-2 results, with the
    stage-1 evaluation under "stage1". hooks see global step numbers (stage 2: S + s)."""
    from unified_petl.train import loop
    from unified_petl.train.config import check_config, with_defaults
    from unified_petl.models.loading import load_pretrained

    config = with_defaults(config)
    check_config(config)
    term = _term(config)
    base = base if base is not None else load_pretrained(config.base)  # loaded once
    config1, workdir1 = stage1_config(config, workdir)
    done = os.path.join(workdir1, "results.json")
    if os.path.isfile(done) and os.path.isfile(os.path.join(workdir, INIT_FILE)):
        with open(done) as f:  # stage 1 and the projection are finished: stage 2 resumes
            first = json.load(f)
    else:
        first = loop.train(config1, workdir1, base=base, hooks=hooks)
        if first.get("preempted"):
            return first
    project(config, workdir, base)
    offset = [lambda step, state, h=h: h(step + term.steps, state) for h in hooks]
    results = loop.train(stage2_config(config, workdir), workdir, base=base, hooks=offset)
    if results.get("preempted"):
        return {**results, "step": results["step"] + term.steps}
    return {**results, "stage1": {"eval": first.get("eval"), "step": first.get("step")}}
