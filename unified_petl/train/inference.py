"""A trained Δh after training: restored from a workdir, scored on a split, run on new text.

    results = evaluate(config, workdir)                          # the run's own evaluation
    results = evaluate(config, workdir, best=True, split="test")  # the paper's test score
    results = predict(config, workdir, best=True, input_file="inputs.txt")

`evaluate` without `split` repeats the run's evaluation (config.data.eval_split, capped at
data.max_eval_examples, decoding only when eval.generate), the evaluation model selection
saw. With `split` it scores the WHOLE split (or its first `max_examples`) with the task's
decoding and metric: seq2seq always decodes (the en-ro configs turn decoding off during
training, and the validation cap of 1600 examples never applies). Either way the scores go
to WORKDIR/eval[_best]_results[_SPLIT].json and the predictions to
WORKDIR/predictions/eval_{latest|best}_SPLIT.jsonl (format: unified_petl.predict).

`predict` writes predictions (and returns scores when the split has references) for a split
or a text file with one input per line, to WORKDIR/predictions/predict_{latest|best}_NAME.jsonl
or `out`.

Which files a split reads: the run's eval split data.eval_files, "train" data.train_files,
"test" data.test_files; '' = the hub (or the generated demo). A run on local files must name
the file of the split it scores: a missing one is an error, never another split's file.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np

from unified_petl.train import optim as optim_lib
from unified_petl.train import selection, storage
from unified_petl.train.checkpoint import (Checkpointer, check_fingerprint, check_method,
                                           load_delta)
from unified_petl.train.config import ConfigError, check_config, with_defaults
from unified_petl.train.setup import build_run, decoder_start, encode_split
from unified_petl.train.sharding import place, shardings_of, tree_shardings
from unified_petl.train.step import (gather, global_batch, init_state, make_eval_step,
                                     place_frozen, split_trainable, variables)

PREDICTIONS = "predictions"  # WORKDIR/predictions/: the JSONL files of eval and predict


class OutputError(OSError):
    """Scores were computed but a result file could not be written; `results` holds them."""

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results


# ----------------------------------------------------------------------------- restore
def restore(config, workdir: str, run, mesh, *, best: bool):
    """(run, trainable, frozen, step) of the latest checkpoint in `workdir`, or with best=True
    of the Δh model selection kept (WORKDIR/best/delta.safetensors).

    The checkpoint must hold a run of config's method and base (the trainer's checks, one
    line each); the selected Δh file carries its own method (prefix MLPs ejected).
    """
    if not storage.isdir(workdir):
        raise ValueError(f"workdir {workdir} not found; give the --workdir of a training run")
    if best:
        path, record = selection.selected(workdir)
        model, delta = load_delta(path, run.base)  # refuses another base
        run = dataclasses.replace(run, model=model)  # prefix MLPs ejected: another tree
        # the stored tree is the whole trainable tree (full) or the whole delta collection
        trainable, frozen = (delta, {}) if run.full else split_trainable(False, run.params,
                                                                         delta)
        return run, trainable, frozen, int(record["step"])
    ckpt = Checkpointer(storage.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        if ckpt.latest_step() is None:
            raise ValueError(f"no checkpoint in {ckpt.directory}; train first with "
                             f"unified-petl train --workdir {workdir}")
        def same_run(meta):  # the trainer's checks, before orbax sees the tree
            check_fingerprint(meta["fingerprint"], run.base, f"the checkpoint in {workdir}")
            check_method(meta["method"], run.model.method, workdir,
                         "evaluate with the run's own config (leave out --config: it reads "
                         f"{storage.join(workdir, 'config.json')}) or "
                         f"--config.method={meta['method']['name']!r}")

        optimizer, _ = optim_lib.make_optimizer(config.optim, config.total_steps,
                                                method=run.model.method)
        delta = run.init_delta(config.seed)
        trainable, frozen = split_trainable(run.full, run.params, delta,
                                            train_head=run.model.method.train_head,
                                            grad_mask=run.grad_mask)
        # a damaged newest checkpoint falls back to the newest intact one, as in training
        state, meta = ckpt.restore_intact(init_state(trainable, optimizer, config.seed, mesh),
                                          same_run)
        return run, state.trainable, frozen, int(meta["step"])
    finally:
        ckpt.close()


def place_as_trained(config, trainable, frozen, mesh):
    """(trainable, frozen) on the mesh as the trainer placed them: the FSDP rule of
    mesh.fsdp / mesh.fsdp_min_size, the base weights stored as config.frozen_dtype, so that
    evaluation computes what the training-time evaluations computed."""
    min_size = int(config.mesh.fsdp_min_size)
    dtype = None if config.frozen_dtype == "float32" else config.frozen_dtype
    return (place(trainable, tree_shardings(trainable, mesh, min_size)),
            place_frozen(frozen, mesh, min_size=min_size, dtype=dtype))


def eval_step_for(run, trainable, frozen, mesh):
    """The eval step for placed (trainable, frozen) trees."""
    return make_eval_step(run.model, mesh, trainable_sharding=shardings_of(trainable),
                          frozen_sharding=shardings_of(frozen))


def _final_stage(config, workdir: str):
    """A diff_pruning config scores its last (fixed-mask) stage, the run in `workdir`; the
    workdir's mask (WORKDIR/mask.safetensors) gives a sparse run its weights."""
    from unified_petl.train import diff_pruning

    return diff_pruning.stage2_config(config, workdir) if diff_pruning.is_two_stage(config) \
        else config


# ----------------------------------------------------------------------------- data
SPLIT_FILES = {"train": "train_files", "test": "test_files"}


def split_config(config, split: str, max_examples: Optional[int] = None):
    """A copy of `config` whose evaluation reads `split` (its own file) whole, or its first
    max_examples rows; the caps of data.max_*_examples do not apply."""
    data = config.data
    key = "eval_files" if split == data.eval_split else SPLIT_FILES.get(split)
    local = [k for k in ("train_files", "eval_files", "test_files") if data.get(k)]
    files = data[key] if key else ""
    # the eval split is read as training read it; another split of a run on local files
    # needs its own file (the hub's, or another split's file, would be silently wrong)
    if not files and local and key != "eval_files":
        named = f"data.{local[0]}={data[local[0]]}"
        if key is None:
            raise ConfigError(f"split {split!r} has no local file: this run reads local files "
                              f"({named}), which name the splits train, {data.eval_split} "
                              "and test; score one of those")
        raise ConfigError(f"split {split!r} has no local file: this run reads local files "
                          f"({named}); set --config.data.{key}=PATH")
    out = config.copy_and_resolve_references()
    limit = int(max_examples or 0)
    if limit < 0:
        raise ConfigError(f"max_examples={limit} must be >= 0 (0: the whole split)")
    out.data.eval_split = split
    out.data.eval_files = files
    if split == "train":
        out.data.train_files = files
    out.data.max_eval_examples = out.data.max_train_examples = limit
    return out


def split_rows(run, config, split: str):
    """The raw examples encode_split(run, config, split) encoded, in the same order."""
    from unified_petl.data import load_task

    train = split == "train"
    files = config.data.train_files if train else config.data.eval_files
    limit = config.data.max_train_examples if train else config.data.max_eval_examples
    return load_task(run.task.name, split, data_files=files or None,
                     max_examples=int(limit) or None, seed=int(config.seed))


# ----------------------------------------------------------------------------- scoring
def score(eval_step, trainable, frozen, encoded, run, config, mesh, *, decode: bool):
    """One pass over `encoded`: (metrics, outputs).

    metrics: {"loss"} (NLL per target token or per example), {"loss_smoothed"} (the same with
    config.label_smoothing, the reference's en-ro selection metric) and the task metric: accuracy
    (percent) for classification; with decode (seq2seq), ROUGE / BLEU of beam-search output
    with the config's `generate` settings (unified_petl.predict), BLEU tokenised as
    config.eval.bleu_tokenize says (reported as "bleu_tokenize").
    outputs: per example in split order, the predicted class id or the generated text
    (None for seq2seq without decode).
    """
    from unified_petl import evaluate as metrics_lib
    from unified_petl.data import eval_batches
    from unified_petl.train.loop import _eval_batch_size

    batch_size = _eval_batch_size(config, mesh)
    buckets = tuple(config.data.buckets) or None
    nll, weight, preds, labels, rows = 0.0, 0.0, [], [], []
    uniform = 0.0  # Σ w·mean_vocab(-log p): with nll, the label-smoothed loss
    stream = eval_batches(encoded, batch_size=batch_size,
                          decoder_start_token_id=decoder_start(run), buckets=buckets,
                          process_index=jax.process_index(), process_count=jax.process_count())
    prefetch = getattr(encoded, "prefetching", None)  # several processes: tokenise lazily
    for local in prefetch(stream) if prefetch is not None else stream:
        out = eval_step(trainable, frozen, global_batch(local, mesh))
        nll += float(out["nll_sum"])
        uniform += float(out["uniform_sum"])
        weight += float(out["weight"])
        if "pred" in out:
            preds.append(gather(out["pred"]))
            labels.append(gather(out["labels"]))
            rows.append(gather(out["weight_rows"]))
    result, outputs = {"loss": nll / max(weight, 1.0)}, None
    eps = float(config.label_smoothing)  # loss_smoothed: the reference's en-ro selection metric
    result["loss_smoothed"] = ((1.0 - eps) * nll + eps * uniform) / max(weight, 1.0)
    if preds:
        preds, labels, rows = np.concatenate(preds), np.concatenate(labels), np.concatenate(rows)
        result.update(metrics_lib.compute(run.task.metric, preds, labels, weights=rows))
        outputs = preds[rows > 0].tolist()  # filler rows (weight 0) dropped: split order
    if decode:
        # ROUGE / BLEU of beam-search output with the config's decoding settings (the
        # paper's model selection for XSum is ROUGE-2).
        from unified_petl.predict import predict_and_score

        scores, outputs = predict_and_score(run.model, variables(run.full, trainable, frozen),
                                            run.task, encoded, run.base.tokenizer, run.base,
                                            config.generate, batch_size=batch_size,
                                            buckets=buckets,
                                            bleu_tokenize=str(config.eval.bleu_tokenize),
                                            mesh=mesh)
        result.update(scores)
    return result, outputs


def _references(run, encoded) -> list:
    if run.task.kind == "classification":
        return encoded.labels.tolist()
    from unified_petl.predict import reference_texts

    return reference_texts(encoded, run.base.tokenizer)


def _records(run, rows, encoded, outputs, with_references: bool = True) -> list[dict]:
    from unified_petl.predict import example_ids, prediction_records, source_inputs

    if len(rows) != len(outputs):
        raise RuntimeError(f"{len(outputs)} predictions for {len(rows)} examples")
    return prediction_records(run.task, source_inputs(run.task, rows), outputs,
                              example_ids(rows),
                              _references(run, encoded) if with_references else None)


# ----------------------------------------------------------------------------- commands
def evaluate(config, workdir: str, *, base=None, best: bool = False,
             split: Optional[str] = None, max_examples: Optional[int] = None) -> dict:
    """Score the latest checkpoint (or with best=True the selected Δh) of `workdir`.

    split None: the run's own evaluation (data.eval_split, capped at data.max_eval_examples
    unless max_examples is given; decoded only when eval.generate). split "test" (or any):
    the whole split with the task's decoding and metric, or its first max_examples rows.
    Returns {"step", "split", "selected", "examples", "eval": metrics, "results": path,
    "predictions": path or None}; writes both files (OutputError if that fails).
    """
    from unified_petl.train.loop import _setup_devices

    config = _final_stage(with_defaults(config), workdir)
    check_config(config)
    mesh = _setup_devices(config)
    run = build_run(config, base, workdir=workdir)
    run, trainable, frozen, step = restore(config, workdir, run, mesh, best=best)
    whole = split is not None
    split = split or config.data.eval_split
    if whole or max_examples is not None:
        limit = max_examples if max_examples is not None else 0
        config = split_config(config, split, limit)
    encoded = encode_split(run, config, split)
    decode = run.task.kind == "seq2seq" and (whole or bool(config.eval.generate))
    trainable, frozen = place_as_trained(config, trainable, frozen, mesh)
    metrics, outputs = score(eval_step_for(run, trainable, frozen, mesh), trainable, frozen,
                             encoded, run, config, mesh, decode=decode)
    tag = "best" if best else "latest"
    name = ("eval_best_results" if best else "eval_results") + (f"_{split}" if whole else "")
    results = {"step": step, "split": split, "selected": best, "examples": len(encoded),
               "eval": metrics, "results": storage.join(workdir, f"{name}.json"),
               "predictions": None}
    if outputs is not None:
        results["predictions"] = storage.join(workdir, PREDICTIONS,
                                              f"eval_{tag}_{split}.jsonl")
    if jax.process_index() == 0:
        records = None
        if outputs is not None:
            records = _records(run, split_rows(run, config, split), encoded, outputs)
        _write(results, records)
    return results


def predict(config, workdir: str, *, base=None, best: bool = False,
            split: Optional[str] = None, input_file: Optional[str] = None,
            out: Optional[str] = None, max_examples: Optional[int] = None) -> dict:
    """Predictions of the latest checkpoint (or best=True: the selected Δh) of `workdir` on a
    whole split (default: data.eval_split) or on `input_file` (one input per line; MNLI:
    premise<TAB>hypothesis), written as JSONL to `out`.

    Seq2seq decodes with the config's `generate` settings; classification takes the argmax.
    Returns {"step", "selected", "split" | "input", "examples", "predictions": path, and for a
    split "eval": its scores against the references}.
    """
    from unified_petl.predict import classify, generate_texts, read_text_inputs, write_jsonl
    from unified_petl.train.loop import _eval_batch_size, _setup_devices

    from unified_petl.data import get_task

    if split is not None and input_file is not None:
        raise ValueError("give a split or an input file, not both")
    config = _final_stage(with_defaults(config), workdir)
    check_config(config)
    tag = "best" if best else "latest"
    if input_file is None:
        split = split or config.data.eval_split
        config = split_config(config, split, max_examples)
    else:  # read before the work: a bad file is reported at once
        lines, examples = read_text_inputs(input_file, get_task(config.task))
        if max_examples:
            lines, examples = lines[:max_examples], examples[:max_examples]
    name = split if input_file is None else os.path.splitext(os.path.basename(input_file))[0]
    out = out or storage.join(workdir, PREDICTIONS, f"predict_{tag}_{name}.jsonl")
    _check_writable(out)  # before the work: the predictions are the product
    mesh = _setup_devices(config)
    run = build_run(config, base, workdir=workdir)
    run, trainable, frozen, step = restore(config, workdir, run, mesh, best=best)
    trainable, frozen = place_as_trained(config, trainable, frozen, mesh)
    results = {"step": step, "selected": best}
    if input_file is None:
        encoded = encode_split(run, config, split)
        metrics, outputs = score(eval_step_for(run, trainable, frozen, mesh), trainable,
                                 frozen, encoded, run, config, mesh,
                                 decode=run.task.kind == "seq2seq")
        records = (_records(run, split_rows(run, config, split), encoded, outputs)
                   if jax.process_index() == 0 else [])
        results.update(split=split, eval=metrics)
    else:
        from unified_petl.data import encode
        from unified_petl.predict import decoder_start_token_id, prediction_records, source_inputs

        if run.base.tokenizer is None:
            raise ValueError(f"base {config.base} has no tokenizer files; save the tokenizer "
                             "next to the weights (tokenizer.save_pretrained)")
        target_len = config.data.max_target_len or run.task.eval_max_target_len or None
        encoded = encode(run.task, examples, run.base.tokenizer,
                         max_source_len=config.data.max_source_len or None,
                         max_target_len=target_len)
        kw = dict(batch_size=_eval_batch_size(config, mesh),
                  buckets=tuple(config.data.buckets) or None, mesh=mesh)
        model_vars = variables(run.full, trainable, frozen)
        if run.task.kind == "classification":
            outputs = classify(run.model, model_vars, encoded, **kw).tolist()
        else:
            outputs = generate_texts(run.model, model_vars, encoded, run.base.tokenizer,
                                     run.base, config.generate,
                                     decoder_start=decoder_start_token_id(run.task,
                                                                          run.base.tokenizer),
                                     **kw)
        records = prediction_records(run.task, source_inputs(run.task, examples), outputs,
                                     lines)
        results["input"] = input_file
    results.update(examples=len(encoded), predictions=out)
    if jax.process_index() == 0:
        try:
            write_jsonl(out, records)
        except OSError as e:
            raise OutputError(f"cannot write {out} ({e.strerror or e}); give --out a "
                              "writable path", results) from None
    return results


def _check_writable(path: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if jax.process_index() != 0:
        return
    if storage.isdir(path):
        raise ValueError(f"cannot write {path} (it is a folder); give --out a file path")
    probe = path + ".tmp"
    try:
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write {path} ({e.strerror or e}); give --out a writable "
                         "path") from None


def _write(results: dict, records: Optional[list]) -> None:
    """The results JSON, then the predictions JSONL; OutputError (carrying the results) when
    either cannot be written."""
    from unified_petl.predict import write_jsonl

    path = results["results"]
    try:
        storage.write_text(path, json.dumps(results, indent=2))  # whole, or not at all
        if records is not None:
            path = results["predictions"]
            write_jsonl(path, records)
    except OSError as e:
        raise OutputError(f"cannot write {path} ({e.strerror or e}); make the workdir "
                          "writable and run again", results) from None
