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
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from unified_petl.train import diff_pruning
from unified_petl.train import optim as optim_lib
from unified_petl.train import selection, storage
from unified_petl.train.checkpoint import (Checkpointer, CheckpointMismatch, barrier,
                                           check_fingerprint, check_method, delta_file_problem,
                                           save_delta)
from unified_petl.train.config import (RESUMABLE_CHANGES, ConfigError, check_config,
                                       resume_changes, run_record, with_defaults)
from unified_petl.train.setup import build_run, decoder_start, encode_split
from unified_petl.train.sharding import host_tree, shardings_of
from unified_petl.train.step import (frozen_dtype_problem, global_batch, init_state,
                                     make_eval_step, make_mesh, make_train_step, place_frozen,
                                     split_trainable, state_shardings, variables)
from unified_petl.train.writer import MetricWriter, Preemption, warn


# Phase durations for jax.monitoring listeners (the demo prints where its time went);
# compilation has JAX's own events (/jax/core/compile/...).
TOKENISE_EVENT = "/unified_petl/train/tokenise_duration"
EVALUATE_EVENT = "/unified_petl/train/evaluate_duration"


class TrainingDiverged(RuntimeError):
    """The loss (or gradient) became NaN/inf; the last good checkpoint was kept."""


def _setup_devices(config):
    """The mesh of this run; with config.distributed, first joins the other processes
    (jax.distributed.initialize with the config's launch keys) and logs one startup line."""
    if config.distributed:
        _initialize_distributed(config)
    mesh = make_mesh(int(config.num_devices) or None,
                     fsdp=int(config.get("mesh", {}).get("fsdp", 1)))
    if config.distributed:
        startup_line(mesh)
    rows = config.batch_size // config.grad_accum
    if not config.max_tokens and rows % mesh.size:
        raise ValueError(f"batch_size={config.batch_size} with grad_accum={config.grad_accum} "
                         f"gives microbatches of {rows} rows, which do not split over "
                         f"{mesh.size} devices; use a batch_size divisible by "
                         f"{mesh.size * config.grad_accum}")
    return mesh


def _initialize_distributed(config) -> None:
    """jax.distributed.initialize with config.coordinator_address, num_processes, process_id
    and local_device_ids ('' / 0 / -1 / (): JAX detects them from SLURM, Open MPI, a TPU VM).
    Once per process: eval after train in one Python process reuses the connection."""
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if config.coordinator_address:
        kwargs["coordinator_address"] = str(config.coordinator_address)
    if int(config.num_processes):
        kwargs["num_processes"] = int(config.num_processes)
    if int(config.process_id) >= 0:
        kwargs["process_id"] = int(config.process_id)
    if tuple(config.local_device_ids):
        kwargs["local_device_ids"] = [int(i) for i in config.local_device_ids]
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(
            f"--config.distributed=true: jax.distributed.initialize failed "
            f"({' '.join(str(e).split())[:200]}); outside SLURM, Open MPI or a TPU VM set "
            "--config.coordinator_address=HOST:PORT, --config.num_processes=N and "
            "--config.process_id=I (launch/multiprocess.sh does)") from None


def startup_line(mesh) -> str:
    """One line on every process (stderr) that shows at once whether the launch is the
    intended one: process index and count, this host's devices, all devices, the mesh."""
    import socket

    local = jax.local_devices()
    kinds = sorted({d.device_kind for d in local})
    ids = [d.id for d in local]
    line = (f"unified-petl: process {jax.process_index()} of {jax.process_count()} on "
            f"{socket.gethostname()}: {len(local)} local {jax.default_backend()} device(s) "
            f"{ids} ({', '.join(kinds)}), {jax.device_count()} global; mesh "
            f"{dict(mesh.shape)}")
    print(line, file=sys.stderr, flush=True)
    unused = unused_gpus(os.environ, len(local), jax.default_backend())
    if unused:
        warn(unused)
    return line


def unused_gpus(env, local_devices: int, backend: str) -> Optional[str]:
    """A warning when SLURM gave this node more GPUs than the processes on it drive (JAX's
    SLURM detection gives a process one GPU, [SLURM_LOCALID]), else None."""
    if backend != "gpu" or "SLURM_JOB_ID" not in env:
        return None
    try:
        gpus = int(env.get("SLURM_GPUS_ON_NODE", "0"))
        tasks = int(str(env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
                        or "1").split("(")[0].split(",")[0])
    except ValueError:
        return None
    if gpus and local_devices * max(tasks, 1) < gpus:
        return (f"SLURM gave this node {gpus} GPUs but its {tasks} process(es) drive "
                f"{local_devices} each: {gpus - local_devices * tasks} idle; set "
                "--config.local_device_ids (launch/slurm.sbatch does) or run one task per GPU")
    return None


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
    if diff_pruning.is_two_stage(config):  # two runs: the gated stage, then a sparse one
        return diff_pruning.train(config, workdir, base=base, hooks=hooks)
    mesh = _setup_devices(config)
    process0 = jax.process_index() == 0
    check_writable(workdir)  # before minutes of loading: a typo'd or read-only path

    # ---------------------------------------------------------------- 2. base, model, data
    wall_start = time.time()
    run = build_run(config, base, workdir=workdir)
    model, full = run.model, run.full
    selection_metric = selection.resolve(run.task, config.eval.selection, _decodes(run, config))
    tokenise_start = time.time()
    train_data = encode_split(run, config, "train")
    eval_data = encode_split(run, config, config.data.eval_split)
    jax.monitoring.record_event_duration_secs(TOKENISE_EVENT, time.time() - tokenise_start)

    # ---------------------------------------------------------------- 3. Δh, optimiser
    optimizer, schedule = optim_lib.make_optimizer(config.optim, config.total_steps,
                                                   method=model.method)
    delta = run.init_delta(config.seed)
    trainable, frozen = split_trainable(full, run.params, delta,
                                        train_head=model.method.train_head,
                                        grad_mask=run.grad_mask)
    problem = frozen_dtype_problem(full, config.frozen_dtype)
    if problem:
        raise ConfigError(problem)
    # by the FSDP rule (unified_petl.train.sharding): replicated when mesh.fsdp = 1
    min_size = int(config.mesh.fsdp_min_size)
    state = init_state(trainable, optimizer, config.seed, mesh, min_size=min_size)
    frozen = place_frozen(frozen, mesh, min_size=min_size,
                          dtype=None if config.frozen_dtype == "float32" else config.frozen_dtype)
    trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.trainable))
    if trained == 0:
        raise ValueError(f"method {model.method.name!r} has no trainable Δh on this model; "
                         "choose a method such as 'lora(r=8)' or 'full'")
    base_size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.params))

    # ---------------------------------------------------------------- 4. resume
    ckpt = Checkpointer(storage.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
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
        recorded = run_record(config)  # without this process's launch settings
        if process0:
            storage.write_text(storage.join(workdir, "config.json"), recorded.to_json(indent=2))

        stream = _train_stream(train_data, run, config, mesh, position)
        layout = state_shardings(state)  # restored states keep the template's shardings
        train_step = make_train_step(model, optimizer, mesh, schedule=schedule,
                                     grad_accum=config.grad_accum,
                                     label_smoothing=config.label_smoothing,
                                     state_sharding=layout, frozen_sharding=shardings_of(frozen))
        eval_step = make_eval_step(model, mesh, trainable_sharding=layout.trainable,
                                   frozen_sharding=shardings_of(frozen))

        def run_eval():
            eval_start = time.time()
            out = _evaluate(eval_step, state.trainable, frozen, eval_data, run, config, mesh)
            jax.monitoring.record_event_duration_secs(EVALUATE_EVENT, time.time() - eval_start)
            return out

        def save(step):
            ckpt.save(step, state, {"method": method_spec, "fingerprint": run.base.fingerprint,
                                    "data": stream.state(), "step": step,
                                    "config": recorded.to_json()})

        def save_trained_delta(path):
            # full: {params, delta}; otherwise the whole delta collection (a frozen head too)
            tree = state.trainable if full else variables(full, state.trainable, frozen)["delta"]
            # host_tree: whole arrays from this host's shards (process 0 alone calls this)
            save_delta(path, model, host_tree(tree), run.base, step=int(state.step))

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
                          **({"penalty": float(m["penalty"])} if "penalty" in m else {}),
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
                # no process leaves before every one has finished writing: a launcher that
                # ends the job when its first process exits (srun --kill-on-bad-exit) would
                # otherwise cut process 0 short while it commits the checkpoint
                barrier("unified_petl_preempted")
                name = preemption.signal_name or "SIGTERM"
                print(f"{name}: saved checkpoint {step} in {ckpt.directory}; run the same "
                      "command again to resume", file=sys.stderr, flush=True)
                return {"preempted": True, "step": step, "signal": name}

        # ------------------------------------------------------------ 6. final eval, results
        results_path = storage.join(workdir, "results.json")
        if start == config.total_steps:  # a finished run: nothing to do but repair
            finished = _finished_results(results_path, process0)
            if finished is not None:
                delta_path = storage.join(workdir, "delta.safetensors")
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
            storage.write_text(results_path, json.dumps(results, indent=2))
            if config.save_delta:
                save_trained_delta(storage.join(workdir, "delta.safetensors"))
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
    """Create `workdir` (a folder or a gs:// URL) and write a file there, or one line that
    says why not."""
    try:
        storage.check_writable(workdir)
    except Exception as e:  # OSError; for a URL also a missing backend, credentials, ...
        if not (isinstance(e, OSError) or storage.is_remote(workdir)):
            raise
        why = getattr(e, "strerror", None) or f"{type(e).__name__}: {' '.join(str(e).split())}"
        fix = ("check the URL, your credentials and that gcsfs is installed (pip install "
               "gcsfs)" if storage.is_remote(workdir) else "choose a folder you can write to")
        raise ValueError(f"cannot write to the workdir {workdir} ({why[:200]}); {fix}") from None


def _finished_results(path: str, process0: bool) -> Optional[dict]:
    """results.json of a finished run, or None (missing; unreadable: renamed .corrupt with
    a warning, and the final evaluation runs again to rewrite it)."""
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except ValueError as e:
        if process0:
            storage.rename(path, path + ".corrupt")
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
        stream = token_budget_batches(train_data, int(config.max_tokens),
                                      multiple_of=mesh.size * int(config.grad_accum), **common)
    else:
        stream = batches(train_data, batch_size=config.batch_size, **common)
    prefetch = getattr(train_data, "prefetching", None)  # several processes: tokenise lazily
    return prefetch(stream) if prefetch is not None else stream


def _progress(config, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=config.total_steps, initial=start, disable=not (enabled and
                                                                      config.progress),
                desc="train", dynamic_ncols=True, file=sys.stderr)
