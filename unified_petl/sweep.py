"""Seed sweeps: one config trained with several seeds, one run after another, ROOT/seed<N> each.

    unified-petl sweep --config configs/glue/mam.py:sst2 --seeds 42,2,4,6,8 \
        --workdir-root runs/sst2_mam
    unified-petl report runs/sst2_mam          # mean ± std over the seeds

The reference code runs GLUE with the seeds 42, 2, 4, 6, 8 (exps/run_glue.sh: a SLURM array
0-4 over `root_seed_list=(42 2 4 6 8)`) and the paper reports means. Running the same command
again continues the sweep: a seed whose results.json was written with the same config is
skipped, an interrupted one resumes from its latest checkpoint (the trainer resumes), a seed
not started yet starts. On SLURM, launch/sweep.sbatch runs the seeds as an array job instead.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

PAPER_SEEDS = (42, 2, 4, 6, 8)


def parse_seeds(text: str) -> tuple[int, ...]:
    """'42,2,4' -> (42, 2, 4); anything else is a ValueError saying what to write."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: write integers separated by commas, e.g. "
                         "42,2,4,6,8") from None
    if not seeds:
        raise ValueError("--seeds is empty; write integers separated by commas, e.g. 42,2,4")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds {text!r}: each seed once, each >= 0")
    return seeds


def seed_workdir(root: str, seed: int) -> str:
    return os.path.join(root, f"seed{seed}")


def finished(workdir: str, config) -> bool:
    """Whether `workdir` holds a finished run (results.json) of exactly `config`."""
    from unified_petl.train.config import with_defaults

    results, saved = (os.path.join(workdir, n) for n in ("results.json", "config.json"))
    if not (os.path.isfile(results) and os.path.isfile(saved)):
        return False
    try:
        with open(saved) as f:
            return json.load(f) == json.loads(with_defaults(config).to_json())
    except ValueError:  # an unreadable config.json: let the trainer decide
        return False


def sweep(config, seeds: Sequence[int], root: str, *, base=None,
          log=lambda message: print(message, file=sys.stderr, flush=True)) -> dict:
    """Train `config` once per seed in ROOT/seed<N>, in order; returns
    {"root", "runs": {seed: results}, "diverged": {seed: message}} or, when a run was
    preempted (SIGTERM), that run's {"preempted": True, ...} at once (run the sweep again to
    continue). A diverged seed does not stop the others.
    """
    from unified_petl.train.config import check_config, with_defaults
    from unified_petl.train.loop import TrainingDiverged, train

    check_config(with_defaults(config))
    runs, diverged = {}, {}
    shared_base: Optional[object] = base
    for seed in seeds:
        run_config = config.copy_and_resolve_references()
        run_config.seed = int(seed)
        workdir = seed_workdir(root, seed)
        if finished(workdir, run_config):
            log(f"seed {seed}: finished ({os.path.join(workdir, 'results.json')}), skipped")
            with open(os.path.join(workdir, "results.json")) as f:
                runs[seed] = json.load(f)
            continue
        if shared_base is None:  # loaded once, shared by every seed (as the demo does)
            from unified_petl.models.loading import load_pretrained

            shared_base = load_pretrained(config.base)
        log(f"seed {seed}: training in {workdir}")
        try:
            results = train(run_config, workdir, base=shared_base)
        except TrainingDiverged as e:
            log(f"seed {seed}: {e}")
            diverged[seed] = str(e)
            continue
        if results.get("preempted"):
            return results
        runs[seed] = results
    return {"root": root, "runs": runs, "diverged": diverged}
