"""The paper's kind of table from finished runs: mean ± std of each metric per run group.

    unified-petl report runs/sst2_mam runs/sst2_lora            # a markdown table
    unified-petl report runs/ --json --metrics 'best/*'         # JSON, selected columns

Each argument is a run folder (it holds results.json) or a folder searched for run folders
(a sweep's ROOT, or a folder of sweeps). Runs form one GROUP when their config.json are equal
except for the seed and the keys in NOT_THE_EXPERIMENT (logging, checkpointing, devices,
which change no result); one row per group.

Metrics of a run (columns):
  best/<metric>       the evaluation model selection kept (results.json "best"), e.g.
                      best/accuracy: the paper's GLUE number (dev accuracy of the selected Δh)
  final/<key>         the last evaluation of training (results.json "eval")
  best_<split>/<key>  `unified-petl eval --best --split SPLIT` (eval_best_results_SPLIT.json),
                      e.g. best_test/bleu, best_test/rouge2: the paper's XSum and en-ro numbers
  latest_<split>/<key>  the same for the latest checkpoint (eval_results_SPLIT.json)
Non-numeric entries (bleu_tokenize) and, unless --metrics names them, the BLEU details bp,
sys_len, ref_len are left out.

std is the SAMPLE standard deviation over the runs of a group, numpy.std(values, ddof=1)
(the spread of seeds, not of the mean); a group of one run has no std (JSON null).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from typing import Optional, Sequence

import numpy as np

DDOF = 1
# Config keys that do not change what a run computes: runs that differ only in these (and in
# the seed) are one group.
NOT_THE_EXPERIMENT = ("seed", "progress", "log_every", "checkpoint_every", "keep_checkpoints",
                      "num_devices", "distributed")
HIDDEN = ("*/bp", "*/sys_len", "*/ref_len")  # shown only when --metrics asks for them
_EVAL_FILE = re.compile(r"eval_(best_)?results_(.+)\.json")


class ReportError(ValueError):
    """No run to report, or a run folder that cannot be read; the message says which."""


@dataclasses.dataclass
class Run:
    path: str
    config: dict  # config.json, flattened to dotted keys
    metrics: dict  # column -> value

    @property
    def seed(self):
        return self.config.get("seed")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _numbers(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_run(path: str) -> Run:
    """A finished run folder -> Run (its config and its metric columns)."""
    def load(name):
        file = os.path.join(path, name)
        try:
            with open(file) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ReportError(f"cannot read {file} ({e}); a run folder needs the results.json "
                              "and config.json that unified-petl train writes") from None

    results, config = load("results.json"), load("config.json")
    metrics = {}
    best = results.get("best") or {}
    if "metric" in best and "value" in best:
        metrics.update(_numbers("best", {best["metric"]: best["value"]}))
    metrics.update(_numbers("final", results.get("eval") or {}))
    for name in sorted(os.listdir(path)):
        m = _EVAL_FILE.fullmatch(name)
        if m:
            tag = f"{'best' if m.group(1) else 'latest'}_{m.group(2)}"
            metrics.update(_numbers(tag, load(name).get("eval") or {}))
    return Run(path=path, config=_flatten(config), metrics=metrics)


def find_runs(paths: Sequence[str]) -> tuple[list[Run], list[str]]:
    """(runs, notes) under `paths`; notes name the folders left out (unfinished runs)."""
    runs, notes = [], []
    for top in paths:
        if not os.path.isdir(top):
            raise ReportError(f"{top} is not a folder; give run folders or folders of runs")
        found = 0
        for folder, subdirs, files in os.walk(top):
            subdirs.sort()
            if "results.json" in files:
                runs.append(read_run(folder))
                found += 1
                subdirs.clear()  # a run's own folders (checkpoints/, best/) hold no runs
            elif "config.json" in files:
                notes.append(f"{folder}: no results.json (unfinished run), left out")
                subdirs.clear()
        if not found:
            notes.append(f"{top}: no finished run found")
    if not runs:
        raise ReportError(f"no finished run (a folder with results.json) under "
                          f"{', '.join(paths)}; train first, or give the runs' folders")
    return runs, notes


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs with equal configs but for NOT_THE_EXPERIMENT, in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items()
                          if k.split(".")[0] not in NOT_THE_EXPERIMENT}, sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _columns(runs: Sequence[Run], patterns: Optional[Sequence[str]]) -> list[str]:
    names = sorted({k for r in runs for k in r.metrics},
                   key=lambda k: (0 if k.startswith("best/") else 2 if k.startswith("final/")
                                  else 1, k))
    if patterns:
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in HIDDEN)]


def summary(values: Sequence[float]) -> dict:
    """{"mean", "std" (ddof=1; None for one value), "n", "values"}."""
    x = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(x)),
            "std": float(np.std(x, ddof=DDOF)) if len(x) > DDOF else None,
            "n": int(len(x)), "values": [float(v) for v in x]}


def aggregate(runs: Sequence[Run], metrics: Optional[Sequence[str]] = None) -> dict:
    """{"ddof", "columns", "groups": [{"label", "differs", "runs", "seeds", "metrics":
    {column: summary}}]} over the groups of `runs`; `metrics`: fnmatch patterns of columns."""
    groups = group_runs(runs)
    columns = _columns(runs, metrics)
    # a row's label: task and method, then the keys on which the groups differ
    keys = sorted({k for g in groups for k in g[0].config} - {"task", "method"})
    varying = [k for k in keys if k.split(".")[0] not in NOT_THE_EXPERIMENT
               and len({json.dumps(g[0].config.get(k)) for g in groups}) > 1]
    out = []
    for group in groups:
        first = group[0].config
        differs = {k: first.get(k) for k in varying}
        label = " ".join(str(first.get(k, "?")) for k in ("task", "method"))
        if differs:
            label += " (" + ", ".join(f"{k}={v}" for k, v in differs.items()) + ")"
        values = {c: [r.metrics[c] for r in group if c in r.metrics] for c in columns}
        out.append({"label": label, "differs": differs, "runs": [r.path for r in group],
                    "seeds": [r.seed for r in group],
                    "metrics": {c: summary(v) for c, v in values.items() if v}})
    return {"ddof": DDOF, "columns": columns, "groups": out}


def _cell(s: Optional[dict], rows: int) -> str:
    if s is None:
        return "—"
    text = f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")
    return text + (f" (n={s['n']})" if s["n"] != rows else "")


def to_markdown(report: dict) -> str:
    """One row per group: label, number of runs, seeds, then mean ± std per column."""
    columns = report["columns"]
    lines = ["| group | runs | seeds | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for g in report["groups"]:
        n = len(g["runs"])
        cells = [_cell(g["metrics"].get(c), n) for c in columns]
        seeds = ",".join(str(s) for s in g["seeds"])
        lines.append(f"| {g['label']} | {n} | {seeds} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"mean ± sample std (ddof={report['ddof']}) over each group's runs; "
                 "(n=k): the column has k runs of the group")
    return "\n".join(lines)


def report(paths: Sequence[str], metrics: Optional[Sequence[str]] = None
           ) -> tuple[dict, list[str]]:
    """(aggregate of the runs under paths, notes on folders left out)."""
    runs, notes = find_runs(paths)
    result = aggregate(runs, metrics)
    if not result["columns"]:
        raise ReportError(f"no metric matches --metrics {' '.join(metrics or [])}; the runs "
                          f"have {', '.join(sorted({k for r in runs for k in r.metrics}))}")
    return result, notes
