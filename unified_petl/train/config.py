"""Training configs: ml_collections ConfigDicts from Python files, command-line overrides.

A config file defines `get_config()` (optionally `get_config(arg)`, selected with
`--config path.py:arg`) and usually starts from `base_config()`, which holds every key the
trainer reads with its default. Top-level keys every training config has:

  base            folder or hub id of the pretrained model (load_pretrained)
  random_init     re-initialise the base weights (same architecture): the control run
  method          Δh preset, e.g. 'mam(l=16, r=16, s=2)' (unified_petl.parse_method)
  task            task name (unified_petl.data.TASKS: xsum, wmt16_en_ro, mnli, sst2, demo)
  seed            data order, Δh init, dropout
  batch_size      global batch: rows per optimiser step, across all devices and hosts
  grad_accum      microbatches per step (batch_size / grad_accum rows each)
  total_steps     optimiser steps
  log_every, eval_every, checkpoint_every, keep_checkpoints (>= 1)
  label_smoothing ε of (1-ε)·NLL + ε·mean_vocab(-log p)
  dtype           compute dtype: float32 | bfloat16 (Δh and optimiser state stay fp32)
  frozen_dtype    how the frozen weights are stored on the devices: float32 | bfloat16 (half
                  the bytes; Δh and optimiser state stay fp32, the model upcasts where it
                  computes in fp32, LayerNorm math stays fp32, the base fingerprint is the
                  fp32 checkpoint's). Refused with method 'full', whose weights are trained
                  (fp32 master weights)
  remat           rematerialisation of each layer: none | full | nothing_saveable |
                  dots_saveable | dots_with_no_batch_dims_saveable (a jax.checkpoint policy,
                  unified_petl.models.remat); same losses and gradients, less activation
                  memory, about one more forward pass of compute
  mesh            fsdp: devices that split the weights (an `fsdp` mesh axis; 1 = all data
                  parallel; it must divide the device count); fsdp_min_size: leaves with
                  fewer elements stay replicated (unified_petl.train.sharding)
  optim           lr, warmup_steps | warmup_ratio, end_lr, b1, b2, eps, weight_decay,
                  max_grad_norm (unified_petl.train.optim)
  data            train_files / eval_files / test_files (local .json/.jsonl/.csv/.parquet of
                  the train split, of eval_split and of the test split; '' = the hub or the
                  generated demo), eval_split, max_source_len / max_target_len (0 = the
                  task's), max_train_examples / max_eval_examples (0 = all), eval_batch_size,
                  buckets (source length buckets, () = powers of two)
  model           num_labels (0 = the task's), pretrained_head, pooling ('cls' | 'mean':
                  what an encoder's head reads)
  max_tokens      > 0: token-budget batches instead of batch_size rows: rows grouped by
                  (source, target) length bucket, B * max(S, T) <= max_tokens per optimiser
                  step (translation, as fairseq); one compile per bucket pair
  base_overrides  attributes of the base's transformers config replaced before the model is
                  built, e.g. attention_dropout=0.0 (an unknown attribute is an error)
  generate        decoding settings (unified_petl.generate keywords: num_beams, max_length,
                  min_length, length_penalty, no_repeat_ngram_size, early_stopping)
  eval            selection: the eval metric that picks the best Δh ('' = the task's when
                  it is computed, else 'loss'; 'loss' is lowest-best, 'accuracy', 'rouge2',
                  'bleu', ... highest-best); generate: decode with `generate` and score
                  ROUGE / BLEU at every evaluation (seq2seq); bleu_tokenize: how BLEU
                  tokenises ('13a': sacrebleu's WMT tokeniser; 'moses': the Moses tokenizer
                  then tokenize='none', the reference's en-ro scoring). The best Δh is
                  written to WORKDIR/best/ (unified_petl.train.selection)
  distributed     call jax.distributed.initialize() (several processes: TPU pod, SLURM, MPI,
                  or launch/multiprocess.sh); each process logs one startup line
  coordinator_address, num_processes, process_id, local_device_ids
                  jax.distributed.initialize's arguments ('' / 0 / -1 / () = JAX detects
                  them from SLURM, Open MPI or the TPU metadata): 'host:port' of process
                  0, how many processes, this one's index, the local GPUs it drives (e.g.
                  (0,1,2,3)); launch settings, not the experiment's: config.json and the
                  checkpoints keep their defaults (LAUNCH_KEYS)
  num_devices     use the first n devices (0 = all)
  progress        show a tqdm progress bar
  save_delta      write WORKDIR/delta.safetensors at the end (save_delta format)
  delta_init      a save_delta file of the same base and method to start Δh from ('' = the
                  method's init): a warm start (diff pruning's stage 2 uses it)

Resuming a workdir compares the config with its checkpoint's: only RESUMABLE_CHANGES (when
the run logs, evaluates, saves; devices; progress) may differ, any other change is refused.

Overrides: `--config.optim.lr=1e-4`; the value is parsed to the type of the existing key
(bool: true/false/1/0; tuples and lists as Python literals). An unknown key or a value of
the wrong type is a ConfigError with one line saying what to write instead.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from typing import Any, Sequence

import ml_collections

REQUIRED = ("base", "method", "task", "seed", "batch_size", "total_steps", "log_every",
            "eval_every", "checkpoint_every", "optim")


# transformers' GenerationConfig defaults: greedy, at most 20 tokens.
GENERATE_DEFAULTS = dict(num_beams=1, max_length=20, min_length=0, length_penalty=1.0,
                         no_repeat_ngram_size=0, early_stopping=False)


# How BLEU may tokenise (unified_petl.evaluate.bleu): sacrebleu's 13a, or Moses + 'none'.
BLEU_TOKENIZERS = ("13a", "moses")

# Groups whose keys are not fixed by base_config(): overrides may add keys to them.
FREE_FORM = ("base_overrides",)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with its default."""
    c = ml_collections.ConfigDict()
    c.base = ""
    c.random_init = False
    c.method = "lora(r=8)"
    c.task = ""
    c.seed = 0
    c.batch_size = 32
    c.grad_accum = 1
    c.total_steps = 1000
    c.log_every = 50
    c.eval_every = 0  # 0: only at the end
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.label_smoothing = 0.0
    c.dtype = "float32"
    c.frozen_dtype = "float32"
    c.remat = "none"
    c.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2 ** 16))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, warmup_steps=0, warmup_ratio=0.0, end_lr=0.0, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0, max_grad_norm=1.0))
    c.data = ml_collections.ConfigDict(dict(
        train_files="", eval_files="", eval_split="validation", max_source_len=0,
        max_target_len=0, max_train_examples=0, max_eval_examples=0, eval_batch_size=0,
        buckets=(), test_files=""))
    c.model = ml_collections.ConfigDict(dict(num_labels=0, pretrained_head=False,
                                             pooling="cls"))
    c.max_tokens = 0
    c.base_overrides = ml_collections.ConfigDict()
    c.generate = ml_collections.ConfigDict(GENERATE_DEFAULTS)
    c.eval = ml_collections.ConfigDict(dict(selection="", generate=False,
                                            bleu_tokenize="13a"))
    c.distributed = False
    c.coordinator_address = ""  # launch settings (LAUNCH_KEYS): '' / 0 / -1 / () = detect
    c.num_processes = 0
    c.process_id = -1
    c.local_device_ids = ()
    c.num_devices = 0
    c.progress = True
    c.save_delta = True
    c.delta_init = ""
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/demo/mam.py' or 'configs/x.py:arg' -> the ConfigDict of its get_config()."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; pass --config path/to/config.py")
    module_spec = importlib.util.spec_from_file_location(
        "_config_" + os.path.basename(path).replace(".", "_"), path)
    module = importlib.util.module_from_spec(module_spec)
    # A config imports the shared settings of its folder (`from xsum_common import ...`).
    folder = os.path.dirname(os.path.abspath(path))
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: say where, in one line
        raise ConfigError(f"cannot execute config {path}: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(folder)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {path} has no get_config() function; define one that "
                          "returns an ml_collections.ConfigDict")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() of {path} returned {type(config).__name__}, not an "
                          "ml_collections.ConfigDict")
    return config


def _parse_value(text: str, current: Any, name: str) -> Any:
    def bad(expected):
        return ConfigError(f"bad value {text!r} for --config.{name}: expected {expected}")

    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise bad("true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise bad("a Python tuple, e.g. (16,32)") from None
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    try:  # None or anything else: a Python literal, else the string itself
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override(config: ml_collections.ConfigDict, assignments: Sequence[str]
             ) -> ml_collections.ConfigDict:
    """Apply 'a.b=v' assignments (the text after --config.) to `config`, in place."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"malformed override --config.{item}: write --config.KEY=VALUE")
        name, text = item.split("=", 1)
        keys = name.split(".")
        node = config
        if len(keys) == 2 and keys[0] in FREE_FORM and keys[0] in config:
            # a free-form group takes new keys: --config.base_overrides.dropout=0.0
            with config[keys[0]].ignore_type():
                config[keys[0]][keys[1]] = _parse_value(text, None, name)
            continue
        for depth, key in enumerate(keys):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = "config." + ".".join(keys[:depth]) if depth else "the config"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(f"unknown config key --config.{name}: {where} has no key "
                                  f"{key!r} (known: {', '.join(known)})")
            if depth < len(keys) - 1:
                node = node[key]
        key = keys[-1]
        if isinstance(node[key], ml_collections.ConfigDict):
            raise ConfigError(f"--config.{name} is a group; set one of its keys, e.g. "
                              f"--config.{name}.{sorted(node[key].keys())[0]}=...")
        value = _parse_value(text, node[key], name)
        try:
            node[key] = value
        except TypeError as e:
            raise ConfigError(f"bad value {text!r} for --config.{name}: {e}") from None
    return config


def check_config(config: ml_collections.ConfigDict) -> None:
    """One clear line for the first setting that cannot work."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"config lacks key(s) {missing}; start from "
                          "unified_petl.train.config.base_config()")
    defaults = base_config()
    for group in ("optim", "data", "model", "generate", "eval", "mesh"):
        if group in config:
            unknown = sorted(set(config[group].keys()) - set(defaults[group].keys()))
            if unknown:
                raise ConfigError(f"unknown key(s) {unknown} in config.{group}; known: "
                                  f"{sorted(defaults[group].keys())}")
    if not config.base:
        raise ConfigError("config.base is empty; set it to a model folder or hub id")
    if not config.task:
        raise ConfigError("config.task is empty; set it to a task name (see unified_petl.data)")
    for key in ("batch_size", "total_steps", "log_every"):
        if int(config[key]) < 1:
            raise ConfigError(f"config.{key}={config[key]} must be >= 1")
    if int(config.get("keep_checkpoints", 2)) < 1:
        raise ConfigError(f"keep_checkpoints={config.keep_checkpoints} must be >= 1: the latest "
                          "checkpoint is what a rerun resumes from and eval reads")
    for key in ("eval_every", "checkpoint_every"):
        if int(config[key]) < 0:
            raise ConfigError(f"config.{key}={config[key]} must be >= 0 (0: only at the end)")
    accum = int(config.get("grad_accum", 1))
    if accum < 1 or config.batch_size % accum:
        raise ConfigError(f"grad_accum={accum} must be >= 1 and divide "
                          f"batch_size={config.batch_size}")
    if config.get("dtype", "float32") not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype={config.dtype!r}: use float32 or bfloat16")
    if config.get("frozen_dtype", "float32") not in ("float32", "bfloat16"):
        raise ConfigError(f"frozen_dtype={config.frozen_dtype!r}: use float32 or bfloat16")
    from unified_petl.models.remat import POLICIES

    if config.get("remat", "none") not in POLICIES:
        raise ConfigError(f"remat={config.remat!r}: use one of {', '.join(POLICIES)}")
    mesh = config.get("mesh", {})
    if int(mesh.get("fsdp", 1)) < 1:
        raise ConfigError(f"mesh.fsdp={mesh.fsdp} must be >= 1 (1 = all data parallel)")
    if int(mesh.get("fsdp_min_size", 0)) < 0:
        raise ConfigError(f"mesh.fsdp_min_size={mesh.fsdp_min_size} must be >= 0")
    if int(config.get("max_tokens", 0)) < 0:
        raise ConfigError(f"max_tokens={config.max_tokens} must be >= 0 (0: batch_size rows)")
    tokenize = config.get("eval", {}).get("bleu_tokenize", "13a")
    if tokenize not in BLEU_TOKENIZERS:
        raise ConfigError(f"eval.bleu_tokenize={tokenize!r}: use '13a' (sacrebleu's WMT "
                          "tokeniser) or 'moses' (Moses tokens, the reference's en-ro BLEU)")
    if not 0.0 <= float(config.get("label_smoothing", 0.0)) < 1.0:
        raise ConfigError(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    check_launch(config)


def check_launch(config: ml_collections.ConfigDict) -> None:
    """One line for launch settings that cannot work (before any process connects)."""
    address = str(config.get("coordinator_address", "") or "")
    count, index = int(config.get("num_processes", 0)), int(config.get("process_id", -1))
    ids = config.get("local_device_ids", ())
    given = [k for k, v in (("coordinator_address", address), ("num_processes", count),
                            ("process_id", index >= 0), ("local_device_ids", ids)) if v]
    if given and not config.get("distributed", False):
        raise ConfigError(f"{', '.join(given)} set without --config.distributed=true; they are "
                          "arguments of jax.distributed.initialize: add it")
    if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise ConfigError(f"coordinator_address={address!r}: write HOST:PORT of process 0, "
                          "e.g. localhost:12345")
    if count < 0 or index < -1:
        raise ConfigError(f"num_processes={count} / process_id={index}: use num_processes >= 1 "
                          "and 0 <= process_id < num_processes (0 and -1: detect them)")
    if count and index >= count:
        raise ConfigError(f"process_id={index} must be < num_processes={count} (processes are "
                          "numbered from 0)")
    if not isinstance(ids, (tuple, list)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"local_device_ids={ids!r}: write device numbers, e.g. "
                          "--config.local_device_ids=0,1,2,3 (() = detect)")


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with: WORKDIR/config.json, written by the trainer."""
    import json

    from unified_petl.train import storage

    path = storage.join(workdir, "config.json")
    if not storage.isfile(path):
        raise ConfigError(f"{path} not found (the trainer writes it); pass --config "
                          "path/to/config.py, or train in this workdir first")
    try:
        data = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a readable config ({e}); pass --config "
                          "path/to/config.py") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds {type(data).__name__}, not a config object; pass "
                          "--config path/to/config.py")
    return ml_collections.ConfigDict(data)


def run_record(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with its defaults and the LAUNCH_KEYS reset: what config.json and the
    checkpoints record, the same on every process of a run."""
    out = with_defaults(config)
    defaults = base_config()
    for key in LAUNCH_KEYS:
        with out.ignore_type():
            out[key] = defaults[key]
    return out


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with every key of base_config() it lacks filled in (a copy)."""
    out = base_config()

    def merge(dst, src):
        for key in src.keys():
            if isinstance(src[key], ml_collections.ConfigDict) and key in dst and \
                    isinstance(dst[key], ml_collections.ConfigDict):
                merge(dst[key], src[key])
            else:
                with dst.ignore_type():
                    dst[key] = src[key]
    merge(out, config)
    return out


# Keys a resumed run may change: they decide when the run reports, saves and what it shows,
# not what it computes. Any other difference from the checkpoint's config changes the run
# (the Δh, the schedule, the data, the evaluations that select the best Δh) and is refused.
# `base` and `method` are compared by what they mean (fingerprint, Method spec) elsewhere.
# Device layout (num_devices, mesh.*) and remat change where and how often values are
# computed, not the values (up to float reduction order, ~1e-7): resumable too.
RESUMABLE_CHANGES = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "progress", "save_delta", "distributed", "num_devices",
                     "data.eval_batch_size", "data.buckets", "mesh.fsdp", "mesh.fsdp_min_size",
                     "remat", "coordinator_address", "num_processes", "process_id",
                     "local_device_ids")
# How this process joins a multi-process job: they differ between the processes of one run
# and between one job and its requeued successor, so config.json and the checkpoints hold
# their defaults (see `run_record`); eval / predict take them from the command line again.
LAUNCH_KEYS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
COMPARED_ELSEWHERE = ("base", "method")
PATH_KEYS = ("data.train_files", "data.eval_files")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same_value(key: str, old: Any, new: Any) -> bool:
    if key in PATH_KEYS and isinstance(old, str) and isinstance(new, str) and old and new:
        return os.path.realpath(old) == os.path.realpath(new)
    return old == new


def resume_changes(saved_json: str, config: ml_collections.ConfigDict) -> list[str]:
    """'key: old -> new' for each setting of `config` that differs from the checkpoint's
    (config.to_json() as stored in its meta) and would change the run if resumed."""
    import json

    old = _flat(json.loads(saved_json))
    new = _flat(json.loads(with_defaults(config).to_json()))
    defaults = _flat(json.loads(base_config().to_json()))
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_CHANGES or key in COMPARED_ELSEWHERE:
            continue
        missing = object()
        # a key the checkpoint's version did not know had its default's behaviour
        before, after = old.get(key, defaults.get(key, missing)), new.get(key, missing)
        if not _same_value(key, before, after):
            show = lambda v: "(none)" if v is missing else json.dumps(v)  # noqa: E731
            changes.append(f"{key} {show(before)} -> {show(after)}")
    return changes
