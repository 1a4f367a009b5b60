"""Where a run reports: WORKDIR/metrics.jsonl (+ TensorBoard events), and how it is stopped.

metrics.jsonl holds one JSON object per line: train records {"step", "loss", "loss_mean",
"nll", "grad_norm", "lr", "steps_per_s"} at every logged step, eval records {"step",
"eval_loss", "eval_accuracy", ...}. On resume from step s, records after s (written by the
interrupted run past its last checkpoint) are dropped, so the file reads as one run.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time


class MetricWriter:
    """Appends records to WORKDIR/metrics.jsonl; mirrors scalars to TensorBoard if installed."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if enabled:
            try:  # optional: only when the tensorboard package is importable
                from tensorboard.summary.writer.event_file_writer import EventFileWriter

                self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop records of steps > step (resume from checkpoint `step`)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in record.items()
                      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]
            self._tb.add_event(Event(wall_time=time.time(), step=int(record["step"]),
                                     summary=Summary(value=values)))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of WORKDIR/metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Preemption:
    """SIGTERM (a scheduler's preemption notice) -> `requested(step)` turns True.

    The handler only sets a flag: the trainer finishes the current step, saves, and returns.
    With several hosts the decision must be the same on all of them, so it comes from JAX's
    preemption sync point (every host stops at the same step).
    """

    def __init__(self):
        self.flag = False
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
            self._previous = None

    def _handle(self, signum, frame):
        self.flag = True

    def requested(self, step: int) -> bool:
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # The local flag alone could stop one host and hang the others.
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.flag

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
