"""The trainer: one linear function in sections, like big_vision's train.py.

    results = train(config, workdir)      # config: see unified_petl.train.config
    results = evaluate(config, workdir)   # the latest checkpoint of a run, on the eval split
    results = evaluate(config, workdir, best=True, split="test")  # the selected Δh, whole split

WORKDIR after a run: checkpoints/ (orbax, the last keep_checkpoints), metrics.jsonl,
results.json (final eval metrics), config.json, delta.safetensors (save_delta format), and
tensorboard/ when tensorboard is installed. Running `train` again on the same workdir
resumes from the latest checkpoint and reproduces the uninterrupted run exactly (same
batches, same dropout keys, same updates). The rerun must be the same run: a config that
changes what it computes is refused before anything is written (train.config.
resume_changes). Damage does not lose the run: a checkpoint that cannot be read back is
renamed STEP.corrupt and the newest intact one resumes; a damaged metrics line, best.json,
best Δh, results.json or delta.safetensors is set aside (*.corrupt) and rebuilt or rewritten
where the run still holds what it needs, each with one warning line.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from unified_petl.build import init_delta
from unified_petl.train import optim as optim_lib
from unified_petl.train import selection
from unified_petl.train.checkpoint import (Checkpointer, CheckpointMismatch, check_fingerprint,
                                           check_method, delta_file_problem, save_delta)
from unified_petl.train.config import (RESUMABLE_CHANGES, check_config, resume_changes,
                                       with_defaults)
from unified_petl.train.setup import build_run, decoder_start, encode_split
from unified_petl.train.step import (global_batch, init_state, make_eval_step,
                                     make_mesh, make_train_step, replicate, split_trainable,
                                     variables)
from unified_petl.train.writer import MetricWriter, Preemption, warn


# Phase durations for jax.monitoring listeners (the demo prints where its time went);
# compilation has JAX's own events (/jax/core/compile/...).
TOKENISE_EVENT = "/unified_petl/train/tokenise_duration"
EVALUATE_EVENT = "/unified_petl/train/evaluate_duration"


class TrainingDiverged(RuntimeError):
    """The loss (or gradient) became NaN/inf; the last good checkpoint was kept."""


def _setup_devices(config):
    if config.distributed:
        jax.distributed.initialize()
    mesh = make_mesh(int(config.num_devices) or None)
    rows = config.batch_size // config.grad_accum
    if not config.max_tokens and rows % mesh.size:
        raise ValueError(f"batch_size={config.batch_size} with grad_accum={config.grad_accum} "
                         f"gives microbatches of {rows} rows, which do not split over "
                         f"{mesh.size} devices; use a batch_size divisible by "
                         f"{mesh.size * config.grad_accum}")
    return mesh


def _eval_batch_size(config, mesh) -> int:
    size = int(config.data.eval_batch_size) or int(config.batch_size // config.grad_accum)
    return max(mesh.size, size // mesh.size * mesh.size)


def train(config, workdir: str, *, base=None,
          hooks: Sequence[Callable[[int, object], None]] = ()) -> dict:
    """Train config's Δh in `workdir` (resuming from its latest checkpoint); returns results.

    base: an already loaded Base to reuse (the demo trains several methods on one base).
    hooks: called as hook(step, state) after every step (tests use one to simulate a crash).
    """
    # ---------------------------------------------------------------- 1. config, devices
    config = with_defaults(config)
    check_config(config)
    mesh = _setup_devices(config)
    process0 = jax.process_index() == 0
    check_writable(workdir)  # before minutes of loading: a typo'd or read-only path

    # ---------------------------------------------------------------- 2. base, model, data
    wall_start = time.time()
    run = build_run(config, base)
    model, full = run.model, run.full
    selection_metric = selection.resolve(run.task, config.eval.selection, _decodes(run, config))
    tokenise_start = time.time()
    train_data = encode_split(run, config, "train")
    eval_data = encode_split(run, config, config.data.eval_split)
    jax.monitoring.record_event_duration_secs(TOKENISE_EVENT, time.time() - tokenise_start)

    # ---------------------------------------------------------------- 3. Δh, optimiser
    optimizer, schedule = optim_lib.make_optimizer(config.optim, config.total_steps)
    delta = init_delta(model, jax.random.key(config.seed), params=run.params)
    trainable, frozen = split_trainable(full, run.params, delta,
                                        train_head=model.method.train_head)
    state = init_state(trainable, optimizer, config.seed, mesh)
    frozen = replicate(frozen, mesh)
    trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.trainable))
    if trained == 0:
        raise ValueError(f"method {model.method.name!r} has no trainable Δh on this model; "
                         "choose a method such as 'lora(r=8)' or 'full'")
    base_size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.params))

    # ---------------------------------------------------------------- 4. resume
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    writer = preemption = bar = None
    try:
        method_spec = json.loads(json.dumps(model.method.to_dict()))
        position = {"epoch": 0, "position": 0}

        def same_run(meta):
            """Refuse a checkpoint of another run: base, method, or a setting that changes
            what the run computes (train.config.resume_changes)."""
            check_fingerprint(meta["fingerprint"], run.base, f"the checkpoint in {workdir}")
            check_method(meta["method"], model.method, workdir,
                         "use a new workdir or the same method")
            changes = resume_changes(meta["config"], config) if "config" in meta else []
            if changes:
                raise CheckpointMismatch(
                    f"{workdir} holds a run with other settings ({'; '.join(changes)}); "
                    "resuming would mix two runs: use a new workdir, or the checkpoint's "
                    f"values (a resume may change only {', '.join(RESUMABLE_CHANGES)})")

        restored = ckpt.restore_intact(state, same_run)
        if restored is not None:
            state, meta = restored
            position = meta["data"]
        start = int(state.step)
        if start > config.total_steps:  # resume_changes refuses this; never write results
            raise CheckpointMismatch(f"{workdir} holds checkpoint {start}, past total_steps="
                                     f"{config.total_steps}; use a new workdir")
        # the checks passed: this config is the run's
        writer = MetricWriter(workdir, enabled=process0)
        writer.truncate_after(start)  # also 0: a run killed before its first checkpoint
        if process0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json(indent=2))

        stream = _train_stream(train_data, run, config, mesh, position)
        train_step = make_train_step(model, optimizer, mesh, schedule=schedule,
                                     grad_accum=config.grad_accum,
                                     label_smoothing=config.label_smoothing)
        eval_step = make_eval_step(model, mesh)

        def run_eval():
            eval_start = time.time()
            out = _evaluate(eval_step, state.trainable, frozen, eval_data, run, config, mesh)
            jax.monitoring.record_event_duration_secs(EVALUATE_EVENT, time.time() - eval_start)
            return out

        def save(step):
            ckpt.save(step, state, {"method": method_spec, "fingerprint": run.base.fingerprint,
                                    "data": stream.state(), "step": step,
                                    "config": config.to_json()})

        def save_trained_delta(path):
            # full: {params, delta}; otherwise the whole delta collection (a frozen head too)
            tree = state.trainable if full else variables(full, state.trainable, frozen)["delta"]
            save_delta(path, model, tree, run.base, step=int(state.step))

        best = selection.Selection(workdir, selection_metric,
                                   save_trained_delta if config.save_delta else None,
                                   resume_step=start, enabled=process0)

        # ---------------------------------------------------------------- 5. the loop
        preemption = Preemption()
        pending, since_log = [], []  # device metrics not yet checked; checked losses to average
        last_saved = ckpt.latest_step()
        log_clock, log_step = time.time(), start
        eval_metrics = {}
        bar = _progress(config, start, process0)

        def check_pending():
            """Fetch the metrics of the steps run since the last check; stop on NaN/inf."""
            fetched = jax.device_get([m for _, m in pending])
            for (step, _), m in zip(pending, fetched):
                if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
                        and m["finite"]):
                    ckpt.wait()
                    kept = (f"the last good checkpoint (step {last_saved}) in "
                            f"{ckpt.directory} is intact" if last_saved is not None
                            else "no checkpoint had been saved")
                    broken = "" if m["finite"] else ", updated Δh not finite"
                    raise TrainingDiverged(
                        f"training diverged at step {step}: loss {m['loss']}, grad norm "
                        f"{m['grad_norm']}{broken}; stopped: {kept}; lower optim.lr "
                        f"(now {config.optim.lr}) or check the data")
                since_log.append(float(m["loss"]))
            pending.clear()
            return fetched[-1] if fetched else None

        for step in range(start + 1, config.total_steps + 1):
            state, metrics = train_step(state, frozen, global_batch(next(stream), mesh))
            pending.append((step, metrics))
            last = step == config.total_steps
            do_log = step % config.log_every == 0 or last
            do_eval = bool(config.eval_every) and step % config.eval_every == 0 and not last
            do_save = (bool(config.checkpoint_every) and step % config.checkpoint_every == 0
                       ) or last
            stop = preemption.requested(step)
            if do_log or do_eval or do_save or stop:
                m = check_pending()  # before any save: never checkpoint a diverged state
            if do_log:
                now = time.time()
                record = {"step": step, "loss": float(m["loss"]),
                          "loss_mean": float(np.mean(since_log)), "nll": float(m["nll"]),
                          "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]),
                          "steps_per_s": (step - log_step) / max(now - log_clock, 1e-9)}
                writer.write(record)
                since_log.clear()
                log_clock, log_step = now, step
                bar.set_postfix(loss=f"{record['loss_mean']:.4f}",
                                steps_per_s=f"{record['steps_per_s']:.2f}")
            if do_eval:
                eval_metrics = run_eval()
                writer.write({"step": step, **{f"eval_{k}": v for k, v in eval_metrics.items()}})
                best.update(step, eval_metrics)
            if do_save or stop:
                save(step)
                last_saved = step
            bar.update(1)
            for hook in hooks:
                hook(step, state)
            if stop and not last:
                ckpt.wait()
                name = preemption.signal_name or "SIGTERM"
                print(f"{name}: saved checkpoint {step} in {ckpt.directory}; run the same "
                      "command again to resume", file=sys.stderr, flush=True)
                return {"preempted": True, "step": step, "signal": name}

        # ------------------------------------------------------------ 6. final eval, results
        results_path = os.path.join(workdir, "results.json")
        if start == config.total_steps:  # a finished run: nothing to do but repair
            finished = _finished_results(results_path, process0)
            if finished is not None:
                delta_path = os.path.join(workdir, "delta.safetensors")
                problem = delta_file_problem(delta_path) if config.save_delta else None
                if problem and process0:  # the final checkpoint holds the same Δh
                    save_trained_delta(delta_path)
                    warn(f"{problem}; rewritten from checkpoint {start}")
                return finished
            writer.truncate_after(start, evals_at_step=False)  # evaluated again just below
        eval_metrics = run_eval()
        writer.write({"step": config.total_steps,
                      **{f"eval_{k}": v for k, v in eval_metrics.items()}})
        best.update(config.total_steps, eval_metrics)
        results = {"step": config.total_steps, "method": model.method.name,
                   "task": run.task.name, "base": config.base,
                   "random_init": bool(config.random_init), "trained_params": trained,
                   "base_params": base_size, "percent_trained": 100.0 * trained / base_size,
                   "wall_time_s": time.time() - wall_start,
                   "eval": dict(eval_metrics), "best": best.best}
        if process0:
            with open(results_path, "w") as f:
                json.dump(results, f, indent=2)
            if config.save_delta:
                save_trained_delta(os.path.join(workdir, "delta.safetensors"))
        return results
    finally:
        if bar is not None:
            bar.close()
        if preemption is not None:
            preemption.restore()
        ckpt.close()
        if writer is not None:
            writer.close()


def check_writable(workdir: str) -> None:
    """Create `workdir` and write a file there, or one line that says why not."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to the workdir {workdir} "
                         f"({e.strerror or type(e).__name__}); choose a folder you can write "
                         "to") from None


def _finished_results(path: str, process0: bool) -> Optional[dict]:
    """results.json of a finished run, or None (missing; unreadable: renamed .corrupt with
    a warning, and the final evaluation runs again to rewrite it)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except ValueError as e:
        if process0:
            os.replace(path, path + ".corrupt")
        warn(f"{path} is unreadable ({type(e).__name__}); kept as {path}.corrupt; evaluating "
             "the final checkpoint again to rewrite it")
        return None


def evaluate(config, workdir: str, *, base=None, best: bool = False,
             split: Optional[str] = None, max_examples: Optional[int] = None) -> dict:
    """Eval metrics of the latest checkpoint in `workdir`, or with best=True of the Δh that
    model selection kept (WORKDIR/best/delta.safetensors).

    split None: config.data.eval_split as the trainer evaluates it (data.max_eval_examples,
    eval.generate); split "test" (or any split): the whole split, decoded for seq2seq, or its
    first max_examples rows. Scores and predictions are written to the workdir; see
    unified_petl.train.inference.evaluate.
    """
    from unified_petl.train.inference import evaluate as evaluate_workdir

    return evaluate_workdir(config, workdir, base=base, best=best, split=split,
                            max_examples=max_examples)


def _evaluate(eval_step, trainable, frozen, encoded, run, config, mesh) -> dict:
    """One pass over `encoded`: {"loss"} (NLL per target token or per example) and the task
    metric: accuracy (percent) for classification; for seq2seq with eval.generate, ROUGE /
    BLEU of generated text (unified_petl.train.inference.score)."""
    from unified_petl.train.inference import score

    return score(eval_step, trainable, frozen, encoded, run, config, mesh,
                 decode=_decodes(run, config))[0]


def _decodes(run, config) -> bool:
    """Whether evaluations decode and score text (seq2seq with eval.generate)."""
    return run.task.kind == "seq2seq" and bool(config.eval.generate)


def _train_stream(train_data, run, config, mesh, position: dict):
    """The training batches from `position` ({epoch, position}): batch_size rows, or about
    max_tokens tokens (rows a multiple of devices x grad_accum, so microbatches split)."""
    from unified_petl.data import batches, token_budget_batches

    common = dict(seed=config.seed, epoch_start=position["epoch"],
                  position=position["position"], decoder_start_token_id=decoder_start(run),
                  buckets=tuple(config.data.buckets) or None,
                  process_index=jax.process_index(), process_count=jax.process_count())
    if config.max_tokens:
        return token_budget_batches(train_data, int(config.max_tokens),
                                    multiple_of=mesh.size * int(config.grad_accum), **common)
    return batches(train_data, batch_size=config.batch_size, **common)


def _progress(config, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=config.total_steps, initial=start, disable=not (enabled and
                                                                      config.progress),
                desc="train", dynamic_ncols=True, file=sys.stderr)
