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

from unified_petl.train import storage


class MetricWriter:
    """Appends records to WORKDIR/metrics.jsonl; mirrors scalars to TensorBoard if installed."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = storage.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if enabled and not storage.is_remote(workdir):  # TensorBoard writes local files
            try:  # optional: only when the tensorboard package is importable
                from tensorboard.summary.writer.event_file_writer import EventFileWriter

                self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None

    def truncate_after(self, step: int, *, evals_at_step: bool = True) -> None:
        """Drop records of steps > step (resume from checkpoint `step`, 0: a fresh start);
        with evals_at_step=False also the eval records of `step` itself (a finished run
        evaluated again)."""
        if not self.enabled or not storage.exists(self.path):
            return
        keep, bad = [], []
        for number, raw in enumerate(storage.lines(storage.read_bytes(self.path)), 1):
            record = _parse(raw)
            if record is None:
                if raw.strip():
                    bad.append((number, raw))
            elif record["step"] < step or (record["step"] == step and (
                    evals_at_step or not any(k.startswith("eval_") for k in record))):
                keep.append(raw if raw.endswith(b"\n") else raw + b"\n")
        if bad:
            storage.append_bytes(self.path + ".corrupt", b"".join(
                raw if raw.endswith(b"\n") else raw + b"\n" for _, raw in bad))
            warn(f"{self.path}: line(s) {', '.join(str(n) for n, _ in bad)} are not JSON "
                 "records (a write cut short?); moved to metrics.jsonl.corrupt")
        storage.write_bytes(self.path, b"".join(keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        storage.append_text(self.path, json.dumps(record) + "\n")
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
    path = storage.join(workdir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    return [r for r in map(_parse, storage.lines(storage.read_bytes(path))) if r is not None]


class Preemption:
    """SIGTERM (a scheduler's preemption notice) or Ctrl-C (SIGINT) -> `requested(step)`
    turns True; `signal_name` says which. The trainer calls requested() at every step.

    One process: a Python handler for both signals only sets a flag: the trainer finishes the
    current step, saves, and returns. A second Ctrl-C raises KeyboardInterrupt at once (no
    save).

    Several processes (jax.distributed): the decision must be the same on every process, or
    one would save and leave while the others wait for it in a collective. JAX's preemption
    service decides: jax.distributed.initialize installs its own SIGTERM handler, which tells
    the other processes through the coordinator, and multihost_utils.
    reached_preemption_sync_point(step) turns True on all of them at one step (the largest
    step any of them had reached, plus one). So no Python SIGTERM handler is installed here
    (it would replace JAX's, and then no process ever stops: the bug of issue 14). Ctrl-C
    is passed on to JAX's handler as a SIGTERM to this process, so it stops every process at
    one step too; a second Ctrl-C raises KeyboardInterrupt. With the preemption service off
    (jax_enable_preemption_service=False) no handler is installed and a signal ends the
    processes without a checkpoint (one warning line says so).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        import jax

        self.flag = False
        self.signal_name = None
        self._previous = {}
        self.multiprocess = jax.process_count() > 1
        signals = self.SIGNALS
        if self.multiprocess:
            self._service = _preemption_service_running()
            signals = (signal.SIGINT,) if self._service else ()
            if not self._service:
                warn("JAX's preemption service is off (jax_enable_preemption_service): "
                     "SIGTERM or Ctrl-C ends the processes without a checkpoint; the latest "
                     "periodic checkpoint is what a rerun resumes from")
        for signum in signals:
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
        if self.multiprocess:  # JAX's handler tells every process: all stop at one step
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        if not self.multiprocess:
            return self.flag
        if not self._service:
            return False
        from jax.experimental import multihost_utils

        # The local flag alone could stop one host and hang the others.
        if multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or "SIGTERM"  # Ctrl-C'd here, or elsewhere
            return True
        return False

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _preemption_service_running() -> bool:
    """Whether jax.distributed.initialize started JAX's preemption sync manager (and with it
    its SIGTERM handler)."""
    try:
        from jax._src import distributed
    except ImportError:  # a JAX without the module: assume the documented default (on)
        return True
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None
