"""Model selection: the best evaluation of a run by one metric, its Δh kept in WORKDIR/best/.

The paper selects XSum checkpoints by ROUGE-2 of decoded summaries, en-ro by the validation
loss and GLUE by accuracy (config.eval.selection). Every evaluation of the trainer goes
through `Selection.update`; when it beats the best so far, the Δh is written (save_delta
format) to WORKDIR/best/delta.safetensors and then WORKDIR/best/best.json records
{"step", "metric", "value"}. Both writes are atomic renames. On resume the record is read
back if it is not newer than the resumed step (a newer one belongs to steps about to be
replayed, which reproduce it exactly).

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
        raise ValueError(f"no selected Δh at {path}; it is written by a training run "
                         "with save_delta=true that evaluated at least once")
    with open(os.path.join(folder, RECORD_FILE)) as f:
        return path, json.load(f)


def greater_is_better(metric: str) -> bool:
    """False for the losses (lowest is best), True for accuracy, ROUGE, BLEU."""
    return metric not in LOSS_KEYS


class Selection:
    """Tracks the best evaluation by `metric`; `save(folder)` writes the current Δh there."""

    def __init__(self, workdir: str, metric: str, save: Optional[Callable[[str], None]], *,
                 resume_step: int = 0, enabled: bool = True):
        self.folder = os.path.join(workdir, FOLDER)
        self.metric, self.save_fn, self.enabled = metric, save, enabled
        self.best: Optional[dict] = None
        self.record = os.path.join(self.folder, RECORD_FILE)
        if os.path.isfile(self.record):
            with open(self.record) as f:
                best = json.load(f)
            if best.get("metric") == metric and int(best["step"]) <= resume_step:
                self.best = best

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if greater_is_better(self.metric):
            return value > self.best["value"]
        return value < self.best["value"]

    def update(self, step: int, metrics: dict) -> bool:
        """Record an evaluation at `step`; True (and the Δh saved) when it is the new best."""
        value = float(metrics[self.metric])
        if not self.better(value):
            return False
        self.best = {"step": int(step), "metric": self.metric, "value": value}
        if self.enabled:
            os.makedirs(self.folder, exist_ok=True)
            if self.save_fn is not None:
                self.save_fn(os.path.join(self.folder, DELTA_FILE))
            with open(self.record + ".tmp", "w") as f:
                json.dump(self.best, f, indent=2)
            os.replace(self.record + ".tmp", self.record)
        return True
