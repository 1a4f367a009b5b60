"""Model selection: the best evaluation of a run by one metric, its Δh kept in WORKDIR/best/.

The paper selects XSum checkpoints by ROUGE-2 of decoded summaries, en-ro by the validation
loss and GLUE by accuracy (config.eval.selection). Every evaluation of the trainer goes
through `Selection.update`; when it beats the best so far, the Δh is written (save_delta
format) to WORKDIR/best/delta.safetensors and then WORKDIR/best/best.json records
{"step", "metric", "value"}. Both writes are atomic renames. On resume the record is read
back if it is not newer than the resumed step (a newer one belongs to steps about to be
replayed, which reproduce it exactly). An evaluation with a NaN/inf metric is never selected
(one warning line says so). A damaged record is renamed best.json.corrupt and rebuilt from
the eval records of metrics.jsonl when the Δh file's header confirms the step; a damaged Δh
file is renamed delta.safetensors.corrupt and the record kept, so only a later evaluation
that beats it writes a new one.

    unified-petl eval --config ... --workdir DIR --best   # score the selected Δh
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

# WORKDIR/best/ holds the selected Δh and its record.
FOLDER, DELTA_FILE, RECORD_FILE = "best", "delta.safetensors", "best.json"

# Every evaluation reports "loss" (NLL per target token or example) and "loss_smoothed" (the
# same with the config's label_smoothing ε: (1-ε)·NLL + ε·mean_vocab(-log p), the reference's
# en-ro selection metric); lowest is best for both.
LOSS_KEYS = ("loss", "loss_smoothed")

# The metric keys an evaluation reports besides the losses, per task metric (evaluate.compute).
METRIC_KEYS = {"accuracy": ("accuracy",), "rouge": ("rouge1", "rouge2", "rougeLsum"),
               "bleu": ("bleu",)}


def available_metrics(task, generate: bool) -> tuple[str, ...]:
    """The keys an evaluation of `task` reports that can select: loss, loss_smoothed, and the
    task metric (classification always; seq2seq only when eval.generate decodes)."""
    if task.kind == "classification" or generate:
        return LOSS_KEYS + METRIC_KEYS[task.metric]
    return LOSS_KEYS


def resolve(task, selection: str, generate: bool) -> str:
    """config.eval.selection checked against what the run computes ('' = the task's own
    selection metric when it is computed, else the loss)."""
    available = available_metrics(task, generate)
    if not selection:
        return task.selection if task.selection in available else "loss"
    if selection not in available:
        hint = (" (decoded metrics need --config.eval.generate=true)"
                if task.kind == "seq2seq" and not generate else "")
        raise ValueError(f"eval.selection={selection!r} is not reported for task "
                         f"{task.name!r}; use one of {', '.join(available)}{hint}")
    return selection


def selected(workdir: str) -> tuple[str, dict]:
    """(path of the selected Δh file, its record {step, metric, value}) of a run in workdir."""
    folder = os.path.join(workdir, FOLDER)
    path = os.path.join(folder, DELTA_FILE)
    if not os.path.isfile(path):
        damaged = (f" (a damaged one was kept as {path}.corrupt)"
                   if os.path.exists(path + ".corrupt") else "")
        raise ValueError(f"no selected Δh at {path}{damaged}; it is written by a training run "
                         "with save_delta=true that evaluated at least once")
    record, problem = _read_record(os.path.join(folder, RECORD_FILE))
    if problem:
        raise ValueError(f"{os.path.join(folder, RECORD_FILE)}: {problem}; rerun "
                         "`unified-petl train` on this workdir to rebuild it")
    return path, record


def _read_record(path: str) -> tuple[Optional[dict], Optional[str]]:
    """(record, None), or (None, why it cannot be used)."""
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
        value = {"step": int(record["step"]), "metric": str(record["metric"]),
                 "value": float(record["value"])}
    except FileNotFoundError:
        return None, "missing"
    except (ValueError, KeyError, TypeError) as e:  # truncated, not JSON, fields missing
        return None, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    return value, None


def _rebuilt_record(workdir: str, metric: str, until: int) -> Optional[dict]:
    """The record Selection.update would have written for the eval records of
    metrics.jsonl up to step `until` (first of equal values, NaN never)."""
    from unified_petl.train.writer import read_metrics

    best = None
    for record in read_metrics(workdir):
        value = record.get(f"eval_{metric}")
        if record["step"] > until or not isinstance(value, (int, float)):
            continue
        if any(isinstance(v, float) and not math.isfinite(v)
               for k, v in record.items() if k.startswith("eval_")):
            continue
        if best is None or (value > best["value"] if greater_is_better(metric)
                            else value < best["value"]):
            best = {"step": int(record["step"]), "metric": metric, "value": float(value)}
    return best


def greater_is_better(metric: str) -> bool:
    """False for the losses (lowest is best), True for accuracy, ROUGE, BLEU."""
    return metric not in LOSS_KEYS


def _set_aside(path: str, enabled: bool) -> str:
    """Rename a damaged file to PATH.corrupt[.n] (kept for inspection); the new path."""
    target, n = path + ".corrupt", 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt.{n}"
    if enabled:
        os.replace(path, target)
    return target


class Selection:
    """Tracks the best evaluation by `metric`; `save(path)` writes the current Δh there."""

    def __init__(self, workdir: str, metric: str, save: Optional[Callable[[str], None]], *,
                 resume_step: int = 0, enabled: bool = True):
        self.folder = os.path.join(workdir, FOLDER)
        self.metric, self.save_fn, self.enabled = metric, save, enabled
        self.best: Optional[dict] = None
        self.record = os.path.join(self.folder, RECORD_FILE)
        self.delta = os.path.join(self.folder, DELTA_FILE)
        self.resume_step = resume_step
        if not os.path.exists(self.record):
            return
        best, problem = _read_record(self.record)
        if problem:
            best = self._rebuild(workdir, problem, resume_step)
        if best is not None and best["metric"] == metric and best["step"] <= resume_step:
            self.best = best
            self._check_delta()

    def _rebuild(self, workdir: str, problem: str, resume_step: int) -> Optional[dict]:
        """A damaged best.json: set it aside; rebuild it from the eval records of
        metrics.jsonl up to the resumed step when the Δh file's header confirms it (its
        step is the rebuilt one, or a later one that the resumed run replays and rewrites)."""
        from unified_petl.train.checkpoint import read_delta_file
        from unified_petl.train.writer import warn

        kept = _set_aside(self.record, self.enabled)
        best = _rebuilt_record(workdir, self.metric, resume_step)
        try:
            step = int(read_delta_file(self.delta)[0].get("step", -1))
        except (ValueError, OSError):
            step = None
        if self.save_fn is None or (best is not None and best["step"] == resume_step) or (
                step is not None and (step > resume_step or (best is not None
                                                             and step == best["step"]))):
            self.best = best
            if best is not None:
                self._write_record()
            found = (f"step {best['step']}, {self.metric} {best['value']}" if best else
                     f"no evaluation up to step {resume_step}")
            warn(f"{self.record} is {problem}; kept as {kept}; rebuilt from the eval "
                 f"records of metrics.jsonl: {found}")
            return best
        if os.path.exists(self.delta):
            _set_aside(self.delta, self.enabled)
        warn(f"{self.record} is {problem}; kept as {kept}; the selection cannot be rebuilt "
             "(the Δh file does not confirm its step), so it starts again with the next "
             "evaluation")
        return None

    def _check_delta(self) -> None:
        """The recorded Δh file must read back; a damaged one is set aside, and rewritten when
        the resumed state is the selected step's (save_fn saves the current Δh); otherwise
        the record stays, and only a later evaluation that beats it writes a new file."""
        from unified_petl.train.checkpoint import read_delta_file
        from unified_petl.train.writer import warn

        if self.save_fn is None:
            return
        try:
            step = read_delta_file(self.delta)[0].get("step")
            problem = (f"{self.delta} holds the Δh of step {step}"
                       if step is not None and int(step) != self.best["step"] else None)
        except (ValueError, OSError) as e:
            problem = str(e)
        if not problem:
            return
        kept = _set_aside(self.delta, self.enabled) if os.path.exists(self.delta) else None
        where = f"; kept as {kept}" if kept else ""
        if self.best["step"] == self.resume_step:
            if self.enabled:
                self.save_fn(self.delta)
            warn(f"the selected Δh of step {self.best['step']} cannot be used ({problem}){where}; "
                 f"rewritten from checkpoint {self.resume_step}")
            return
        warn(f"the selected Δh of step {self.best['step']} cannot be used ({problem}){where}; a "
             f"new one is written only if a later evaluation beats {self.metric} "
             f"{self.best['value']}")

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if greater_is_better(self.metric):
            return value > self.best["value"]
        return value < self.best["value"]

    def update(self, step: int, metrics: dict) -> bool:
        """Record an evaluation at `step`; True (and the Δh saved) when it is the new best.
        An evaluation with any NaN/inf metric is never the best (accuracy can look normal
        while the logits are NaN: argmax of NaN is 0)."""
        from unified_petl.train.writer import warn

        broken = sorted(k for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not math.isfinite(v))
        if broken:
            warn(f"evaluation at step {step} produced NaN/inf ({', '.join(broken)}); it is not "
                 "selected as best")
            return False
        value = float(metrics[self.metric])
        if not self.better(value):
            return False
        self.best = {"step": int(step), "metric": self.metric, "value": value}
        if self.enabled:
            os.makedirs(self.folder, exist_ok=True)
            if self.save_fn is not None:
                self.save_fn(self.delta)
            self._write_record()
        return True

    def _write_record(self) -> None:
        if self.enabled:
            os.makedirs(self.folder, exist_ok=True)
            with open(self.record + ".tmp", "w") as f:
                json.dump(self.best, f, indent=2)
            os.replace(self.record + ".tmp", self.record)
