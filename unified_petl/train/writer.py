"""Where a run reports: WORKDIR/metrics.jsonl (+ TensorBoard events), and how it is stopped.

metrics.jsonl holds one JSON object per line: train records {"step", "loss", "loss_mean",
"nll", "grad_norm", "lr", "steps_per_s"} at every logged step, eval records {"step",
"eval_loss", "eval_accuracy", ...}. On resume from step s (0 without a checkpoint), records
after s (written by the interrupted run past its last checkpoint) are dropped, so the file
reads as one run; a line that is not JSON (a write cut short by a kill) is moved to
metrics.jsonl.corrupt with one warning line.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
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

    def truncate_after(self, step: int, *, evals_at_step: bool = True) -> None:
        """Drop records of steps > step (resume from checkpoint `step`, 0: a fresh start);
        with evals_at_step=False also the eval records of `step` itself (a finished run
        evaluated again)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        keep, bad = [], []
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                record = _parse(raw)
                if record is None:
                    if raw.strip():
                        bad.append((number, raw))
                elif record["step"] < step or (record["step"] == step and (
                        evals_at_step or not any(k.startswith("eval_") for k in record))):
                    keep.append(raw if raw.endswith(b"\n") else raw + b"\n")
        if bad:
            with open(self.path + ".corrupt", "ab") as f:
                f.writelines(raw if raw.endswith(b"\n") else raw + b"\n" for _, raw in bad)
            warn(f"{self.path}: line(s) {', '.join(str(n) for n, _ in bad)} are not JSON "
                 "records (a write cut short?); moved to metrics.jsonl.corrupt")
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
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


def warn(message: str) -> None:
    """One warning line on stderr (the CLI's errors read `unified-petl: error: ...`)."""
    print(f"unified-petl: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _parse(raw: bytes):
    """A metrics record from one line of metrics.jsonl, or None when it is not one."""
    try:
        record = json.loads(raw)
    except ValueError:  # a half-written line, not UTF-8
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return record


def read_metrics(workdir: str) -> list[dict]:
    """All records of WORKDIR/metrics.jsonl (a line that is not a record, e.g. one being
    written right now, is skipped; `train` moves such lines aside when it resumes)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [r for r in map(_parse, f) if r is not None]


class Preemption:
    """SIGTERM (a scheduler's preemption notice) or Ctrl-C (SIGINT) -> `requested(step)`
    turns True; `signal_name` says which.

    The handler only sets a flag: the trainer finishes the current step, saves, and returns.
    A second Ctrl-C raises KeyboardInterrupt at once (no save). With several hosts the
    decision must be the same on all of them, so it comes from JAX's preemption sync point
    (every host stops at the same step).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.flag = False
        self.signal_name = None
        self._previous = {}
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.flag:
            self.restore()
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        if signum == signal.SIGINT:
            print("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again: stop at "
                  "once, without one)", file=sys.stderr, flush=True)
        self.flag = True
        self.signal_name = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # The local flag alone could stop one host and hang the others.
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.flag

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
