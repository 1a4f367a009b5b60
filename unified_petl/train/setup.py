"""What a run needs before its first step: the base (or its random twin), the model, the data.

Shared by `loop.train` and `loop.evaluate` so both build exactly the same model and batches.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

from unified_petl.build import build, shape_tree
from unified_petl.models.loading import (Base, CheckpointError, _strip_body_prefix,
                                         convert_state_dict, hf_key, load_pretrained,
                                         read_state_dict)


@dataclasses.dataclass
class Run:
    """base: Base (random_init: the re-initialised one, with its own fingerprint);
    task: data.Task; model: the Flax module with Δh; params: the frozen tree the model
    expects; full: full fine-tuning (params are trained too); masks: the resolved
    masks.SparseMask of a sparse term or Child-Tuning_D (None otherwise); initial: the warm
    start of config.delta_init ({'/'-joined delta path: array}, {} without one)."""

    base: Base
    task: Any
    model: Any
    params: Any
    masks: Any = None
    initial: dict = dataclasses.field(default_factory=dict)
    warned: set = dataclasses.field(default_factory=set)  # warnings already printed

    @property
    def full(self) -> bool:
        return bool(self.model.method.full)

    def init_delta(self, seed: int) -> Any:
        """The initial Δh of this run: the model's init with `seed`, sparse indices from the
        run's mask, and the warm start of config.delta_init."""
        from unified_petl.build import init_delta

        return init_delta(self.model, jax.random.key(seed), params=self.params,
                          masks=self.masks if self.model.method.sparse is not None else None,
                          initial=self.initial)

    @property
    def grad_mask(self) -> Optional[dict]:
        """Child-Tuning_D's fixed gradient mask (split_trainable's grad_mask), else None."""
        child = self.model.method.grad_mask
        if child is None or child.mask != "fisher":
            return None
        return self.masks.grad_mask()


def load_base(config, base: Optional[Base] = None) -> Base:
    """config.base loaded (or the given Base), re-initialised when config.random_init."""
    base = base if base is not None else load_pretrained(config.base)
    if not config.random_init:
        return base
    # The control run: the same architecture and tokenizer, seeded random weights (the
    # model's own initialisers). Its fingerprint differs, so its Δh cannot be mixed up.
    model = build(base.config, "none", num_labels=0)
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    params = jax.jit(model.init)({"params": key, "dropout": key},
                                 **_dummy_inputs())["params"]
    return dataclasses.replace(base, params=params)


def _dummy_inputs():
    ids = jnp.full((1, 8), 5, jnp.int32)
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}


def build_run(config, base: Optional[Base] = None, workdir: Optional[str] = None) -> Run:
    """The run of `config`. workdir: where a resolved mask is kept between starts of the run
    (unified_petl.train.masking; without it a mask is recomputed)."""
    from unified_petl.data import get_task
    from unified_petl.delta.spec import parse_method
    from unified_petl.train import masking

    task = get_task(config.task)
    base = load_base(config, base)
    num_labels = None
    if task.kind == "classification":
        num_labels = int(config.model.num_labels) or task.num_labels
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    method, masks = masking.resolve(config, base, task, parse_method(config.method),
                                    workdir=workdir)
    model = build(overridden(base.config, config.get("base_overrides")), method,
                  num_labels=num_labels, pretrained_head=bool(config.model.pretrained_head),
                  pooling=str(config.model.pooling), dtype=dtype,
                  remat=str(config.get("remat", "none")))
    if task.kind == "seq2seq" and not model.cfg.seq2seq:
        raise ValueError(f"task {task.name!r} is seq2seq but base {config.base} is an "
                         "encoder-only model; use a BART/mBART base")
    if task.kind == "classification" and model.cfg.seq2seq:
        raise ValueError(f"task {task.name!r} is classification; use an encoder-only base "
                         f"(RoBERTa/BERT), not {config.base}")
    if task.kind == "seq2seq":
        check_decoding(config, model, base)
    return Run(base=base, task=task, model=model, params=frozen_params(base, model),
               masks=masks, initial=_warm_start(config, base))


def _warm_start(config, base: Base) -> dict:
    """{'/'-joined delta path: array} of config.delta_init (a save_delta file of this base)."""
    path = str(config.get("delta_init", "") or "")
    if not path:
        return {}
    from flax import traverse_util

    from unified_petl.train.checkpoint import load_delta

    _, delta = load_delta(path, base)  # refuses another base
    return traverse_util.flatten_dict(delta, sep="/") if delta else {}


def check_decoding(config, model, base) -> None:
    """The config's `generate` settings checked against the model before any work (before,
    a max_length past the decoder's position table was refused only at the first decoding
    evaluation, after the training up to it): one ConfigError line naming the key."""
    from unified_petl.generate import _settings
    from unified_petl.predict import generate_kwargs
    from unified_petl.train.config import ConfigError

    try:
        kwargs = generate_kwargs(config.get("generate"))
        # the search settings only: token ids come from the checkpoint when decoding
        _settings(model, None, **kwargs, decoder_start_token_id=0, eos_token_id=0,
                  pad_token_id=0, forced_bos_token_id=None, forced_eos_token_id=None)
    except ValueError as e:
        limit = model.cfg.max_positions + 1
        fix = (f"set --config.generate.max_length to at most {limit}"
               if "positions" in str(e) else "fix the config's generate group")
        raise ConfigError(f"config.generate of base {config.base}: {e}; {fix}") from None


def overridden(hf_config, overrides) -> Any:
    """A copy of a transformers config with `overrides` (config.base_overrides) set; the
    base itself is left alone (the demo shares one Base between runs)."""
    if not overrides:
        return hf_config
    out = copy.deepcopy(hf_config)
    for key, value in dict(overrides).items():
        if not hasattr(hf_config, key):
            raise ValueError(f"base_overrides.{key}: the {type(hf_config).__name__} of the base "
                             f"has no attribute {key!r}; use one of its config.json keys, e.g. "
                             "attention_dropout or dropout")
        setattr(out, key, value)
    return out


def frozen_params(base: Base, model) -> Any:
    """The frozen tree `model` expects, taken from base.params.

    Weights the model uses but load_pretrained left out are read from the checkpoint: a
    BERT-family head runs the pretrained pooler, which load_pretrained skips when the
    checkpoint has no classification head (sentence-transformers' MiniLM). Weights the
    model does not use (a checkpoint's own head when a new one is trained) are dropped.
    """
    expected = traverse_util.flatten_dict(shape_tree(model, "params"))
    have = traverse_util.flatten_dict(base.params)
    out, missing = {}, []
    for path, leaf in expected.items():
        if path not in have:
            missing.append(path)
        elif tuple(have[path].shape) != tuple(leaf.shape):
            raise CheckpointError(
                f"base weight {'/'.join(path)} has shape {tuple(have[path].shape)} but the "
                f"model needs {tuple(leaf.shape)} (a pretrained head with another number of "
                "labels? set config.model.pretrained_head=False)")
        else:
            out[path] = have[path]
    if missing:
        if not base.path:
            raise CheckpointError(f"base lacks weights {['/'.join(p) for p in missing]}")
        seq2seq = model.cfg.seq2seq
        state = {_strip_body_prefix(k): v for k, v in read_state_dict(base.path).items()}
        keys = {hf_key(p, seq2seq) for p in missing}
        sub = {k: v for k, v in state.items() if k in keys}
        extra = convert_state_dict(sub, traverse_util.unflatten_dict(
            {p: expected[p] for p in missing}), seq2seq, source=base.path)
        out.update(traverse_util.flatten_dict(extra))
    return traverse_util.unflatten_dict(out)


def encode_split(run: Run, config, split: str):
    """Tokenised split ('train' or config.data.eval_split) of the run's task, its lengths
    within the model's position table (sequence_lengths). With several processes, a
    train.host_data.HostEncoded: the lengths of every row, the tokens of the rows this
    process feeds, tokenised as its batches need them (iterate its batches through
    `encoded.prefetching(stream)`)."""
    from unified_petl.data import encode, load_task

    if run.base.tokenizer is None:
        raise ValueError(f"base {run.base.path or config.base} has no tokenizer files; save "
                         "the model's tokenizer next to its weights (tokenizer.save_pretrained)")
    train = split == "train"
    files = config.data.train_files if train else config.data.eval_files
    limit = config.data.max_train_examples if train else config.data.max_eval_examples
    try:
        dataset = load_task(run.task.name, split, data_files=files or None,
                            max_examples=int(limit) or None, seed=int(config.seed))
    except OSError as e:  # the hub: ConnectionError offline, DatasetNotFoundError, ...
        if files or run.task.hub is None:
            raise
        key = "data.train_files" if train else "data.eval_files"
        raise ValueError(f"task {run.task.name!r}: the {split} split comes from the hub "
                         f"({run.task.hub[0]}) and could not be loaded ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}); set "
                         f"--config.{key}=FILE (.json/.jsonl/.csv/.parquet with columns "
                         f"{list(run.task.columns)})") from None
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of task {run.task.name!r} is empty "
                         f"({files or 'generated/hub data'}); give a file with examples")
    source_len, target_len = sequence_lengths(run, config, split)
    if jax.process_count() > 1:  # each process tokenises what it feeds (train.host_data)
        from unified_petl.train.host_data import encode_for_process

        return encode_for_process(run.task, dataset, run.base.tokenizer,
                                  max_source_len=source_len, max_target_len=target_len,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
    return encode(run.task, dataset, run.base.tokenizer, max_source_len=source_len,
                  max_target_len=target_len)


def sequence_lengths(run: Run, config, split: str) -> tuple[int, Optional[int]]:
    """(max_source_len, max_target_len or None) to encode `split` with, within the model's
    position table. Past it, JAX's embedding gather reads NaN (it does not fail), so:

    - a length the config sets (data.max_source_len, max_target_len, a data.buckets entry)
      beyond the table is refused, naming both numbers: the config is the record of the
      experiment, and silently training on shorter inputs than it says would make it lie;
    - a task default beyond the table (GLUE's 512 on a smaller model) is cut to the table
      with one warning line: the user asked for nothing, and the model's own limit is the
      standard truncation (transformers' model_max_length).
    """
    from unified_petl.train.config import ConfigError
    from unified_petl.train.writer import warn

    cfg = run.model.cfg
    limits = {"source": cfg.max_source_positions,
              "target": cfg.max_positions if cfg.seq2seq else None}
    where = f"base {config.base}"
    data = config.data
    for key, kind in (("max_source_len", "source"), ("max_target_len", "target")):
        value, limit = int(data[key]), limits[kind]
        if limit is not None and value > limit:
            raise ConfigError(f"data.{key}={value} is longer than the {limit} {kind} positions "
                              f"of {where}; set --config.data.{key} to at most {limit}")
    too_long = [b for b in data.buckets if int(b) > limits["source"]]
    if too_long:
        raise ConfigError(f"data.buckets {tuple(data.buckets)} has {too_long} longer than the "
                          f"{limits['source']} source positions of {where}; use buckets of at "
                          f"most {limits['source']}")

    def default(value, kind, name):
        limit = limits[kind]
        if limit is None or value is None or value <= limit:
            return value
        message = (f"task {run.task.name!r} cuts {kind}s at {value} tokens ({name}) but {where} "
                   f"has {limit} {kind} positions: {kind}s are cut at {limit} (set "
                   f"--config.data.max_{kind}_len to choose)")
        if message not in run.warned:
            run.warned.add(message)
            warn(message)
        return limit

    source = int(data.max_source_len) or default(run.task.max_source_len, "source",
                                                  "its max_source_len")
    target = int(data.max_target_len) or None
    if target is None and split != "train" and run.task.eval_max_target_len:
        target = default(run.task.eval_max_target_len, "target", "its eval_max_target_len")
    if target is None and run.task.kind == "seq2seq":
        target = default(run.task.max_target_len, "target", "its max_target_len")
    return source, target


def decoder_start(run: Run) -> Optional[int]:
    """BART starts the decoder with decoder_start_token_id; mBART with the language code
    (None: the data module rotates the last label token to the front)."""
    if not run.model.cfg.seq2seq:
        return None
    if getattr(run.base.config, "model_type", "") == "mbart":
        return None
    return int(run.base.config.decoder_start_token_id)
