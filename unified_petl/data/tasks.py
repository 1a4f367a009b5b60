"""The paper's tasks (XSum, WMT16 en-ro, MNLI, SST-2) and the demo task, via HF `datasets`.

A `Task` says which columns an example has and how it becomes model inputs (source text or
text pair, target text or class id), with the paper's length limits, metric and model
selection criterion. `load_task` reads a split from the hub (real code, needs network) or
from local json/jsonl/csv/parquet files with the same columns (always works offline).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Mapping

import datasets


@dataclasses.dataclass(frozen=True)
class Task:
    """How one task's examples become model inputs.

    source_fn(example) -> str, or (str, str) for a text pair (MNLI premise/hypothesis).
    target_fn(example) -> str (seq2seq target text) or int (class id).
    max_source_len / max_target_len: token limits after tokenisation, special tokens
    included (paper: xsum 512/128, en-ro 150/150, GLUE 512). eval_max_target_len: the
    shorter target limit used for validation (paper: XSum 60), None = max_target_len.
    src_lang / tgt_lang: set on multilingual tokenizers (mBART) before tokenising.
    """
    name: str
    kind: str  # "seq2seq" | "classification"
    columns: tuple[str, ...]
    source_fn: Callable[[Mapping], str | tuple[str, str]]
    target_fn: Callable[[Mapping], str | int]
    max_source_len: int
    max_target_len: int = 0
    eval_max_target_len: int | None = None
    num_labels: int = 0
    label_names: tuple[str, ...] = ()
    metric: str = "accuracy"  # "rouge" | "bleu" | "accuracy"
    selection: str = "accuracy"  # "rouge2" | "loss" | "accuracy"
    hub: tuple[str, str | None] | None = None  # (path, config name) for datasets.load_dataset
    hub_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)  # ours -> hub's
    src_lang: str | None = None
    tgt_lang: str | None = None
    target_lang: str | None = None  # the language of the target text, for BLEU post-processing


TASKS: dict[str, Task] = {
    "xsum": Task(
        name="xsum", kind="seq2seq", columns=("document", "summary"),
        source_fn=lambda ex: ex["document"], target_fn=lambda ex: ex["summary"],
        max_source_len=512, max_target_len=128, eval_max_target_len=60,
        metric="rouge", selection="rouge2", hub=("EdinburghNLP/xsum", None)),
    "wmt16_en_ro": Task(
        name="wmt16_en_ro", kind="seq2seq", columns=("translation",),
        source_fn=lambda ex: ex["translation"]["en"], target_fn=lambda ex: ex["translation"]["ro"],
        max_source_len=150, max_target_len=150, metric="bleu", selection="loss",
        hub=("wmt/wmt16", "ro-en"), src_lang="en_XX", tgt_lang="ro_RO", target_lang="ro"),
    "mnli": Task(
        name="mnli", kind="classification", columns=("premise", "hypothesis", "label"),
        source_fn=lambda ex: (ex["premise"], ex["hypothesis"]), target_fn=lambda ex: ex["label"],
        max_source_len=512, num_labels=3, label_names=("entailment", "neutral", "contradiction"),
        hub=("nyu-mll/glue", "mnli"),
        hub_splits={"validation": "validation_matched", "test": "test_matched"}),
    "sst2": Task(
        name="sst2", kind="classification", columns=("sentence", "label"),
        source_fn=lambda ex: ex["sentence"], target_fn=lambda ex: ex["label"],
        max_source_len=512, num_labels=2, label_names=("negative", "positive"),
        hub=("nyu-mll/glue", "sst2")),
    # Built in memory from the VADER lexicon (data/demo.py); sentences are < 20 tokens.
    "demo": Task(
        name="demo", kind="classification", columns=("text", "label"),
        source_fn=lambda ex: ex["text"], target_fn=lambda ex: ex["label"],
        max_source_len=64, num_labels=2, label_names=("negative", "positive"),
        hub_splits={"validation": "test"}),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def _builder(path: str) -> str:
    """The datasets builder name ("json", "csv", "parquet") for a file, from its extension."""
    stem = path
    for c in _COMPRESSIONS:
        if stem.endswith(c):
            stem = stem[: -len(c)]
    ext = os.path.splitext(stem)[1].lower()
    if ext not in _BUILDERS:
        raise ValueError(f"{path}: unsupported file type {ext or '(none)'!r}; "
                         f"use one of {sorted(_BUILDERS)}")
    return _BUILDERS[ext]


def _split_file(data_files: str | os.PathLike | Mapping[str, str], split: str, task: Task) -> str:
    if not isinstance(data_files, Mapping):
        return os.fspath(data_files)
    for key in (split, task.hub_splits.get(split)):
        if key in data_files:
            return os.fspath(data_files[key])
    raise ValueError(f"no file for split {split!r} in data_files (it has {sorted(data_files)}); "
                     f"add data_files[{split!r}] = <path>")


def _check_text(path: str, builder: str) -> None:
    """An empty file, or text that is not UTF-8, as one line naming the file (and the line):
    datasets reads the first as StopIteration and the second only when the column is used."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty; give a file with examples")
    if builder == "parquet" or path.endswith(_COMPRESSIONS):
        return
    import codecs

    decoder, line, offset = codecs.getincrementaldecoder("utf-8")(), 1, 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = line + chunk.count(b"\n", 0, max(e.start, 0))
                raise ValueError(f"{path}: line {bad} is not UTF-8 text (byte "
                                 f"{chunk[e.start:e.start + 1]!r} at file offset "
                                 f"{offset + e.start}); save the file as UTF-8") from None
            line += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: the file ends inside a UTF-8 character (line {line}); "
                             "save the file as UTF-8") from None


def _read_local(path: str) -> datasets.Dataset:
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found")
    builder = _builder(path)
    _check_text(path, builder)
    try:
        return datasets.load_dataset(builder, data_files={"data": path}, split="data")
    except Exception as e:  # datasets wraps parse errors in DatasetGenerationError chains
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ValueError(f"{path}: could not read as {builder}: {detail}") from e


def _check_columns(ds: datasets.Dataset, task: Task, path: str) -> datasets.Dataset:
    cols = set(ds.column_names)
    # CSV cannot hold the nested {"en", "ro"} dict of the hub's wmt16: accept flat columns.
    if task.name == "wmt16_en_ro" and "translation" not in cols and {"en", "ro"} <= cols:
        ds = ds.map(lambda ex: {"translation": {"en": ex["en"], "ro": ex["ro"]}},
                    remove_columns=["en", "ro"])
        cols = set(ds.column_names)
    missing = [c for c in task.columns if c not in cols]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} for task {task.name!r}; "
                         f"expected {list(task.columns)}, found {sorted(cols)}")
    if task.name == "wmt16_en_ro" and len(ds):
        first = ds[0]["translation"]
        if not isinstance(first, Mapping) or not {"en", "ro"} <= set(first):
            raise ValueError(f"{path}: column 'translation' must hold {{'en': ..., 'ro': ...}} "
                             f"dicts, found {first!r:.80}")
    return ds


def _labels_to_ids(ds: datasets.Dataset, task: Task, path: str) -> datasets.Dataset:
    """Local files may name labels ("entailment") instead of numbering them: map to ids.
    A label that is neither a name nor a whole number (null, 1.7) is refused: a cast
    would silently cut 1.7 to 1."""
    if task.kind != "classification" or not len(ds):
        return ds
    for row, label in enumerate(ds["label"], 1):
        whole = isinstance(label, int) or (isinstance(label, float) and label.is_integer())
        if not (whole and not isinstance(label, bool)) and not isinstance(label, str):
            raise ValueError(f"{path}: row {row} has label {json.dumps(label)}; labels are "
                             f"class ids 0..{task.num_labels - 1} or names "
                             f"{list(task.label_names)}")
    if isinstance(ds[0]["label"], str):
        ids = {n: i for i, n in enumerate(task.label_names)}
        unknown = sorted(set(ds["label"]) - set(ids))
        if unknown:
            raise ValueError(f"{path}: unknown label(s) {unknown[:5]} for task {task.name!r}; "
                             f"expected ids 0..{task.num_labels - 1} or names {list(ids)}")
        ds = ds.map(lambda ex: {"label": ids[ex["label"]]})
    return ds


def load_task(name: str, split: str, *, data_files=None, max_examples: int | None = None,
              seed: int = 0) -> datasets.Dataset:
    """One split of a task as a datasets.Dataset with the task's columns.

    split: "train", "validation" or "test" (mapped to the hub's names, e.g. MNLI
    "validation" -> "validation_matched"); a hub split name is accepted too.
    data_files: None -> the hub (or, for "demo", the generated task with `seed`); a path
    (used whatever the split) or a dict split -> path of .json/.jsonl/.csv/.parquet files.
    max_examples: keep the first n rows.
    """
    task = get_task(name)
    if data_files is not None:
        path = _split_file(data_files, split, task)
        ds = _read_local(path)
        ds = _labels_to_ids(_check_columns(ds, task, path), task, path)
    elif task.name == "demo":
        from unified_petl.data.demo import demo_task

        parts = demo_task(seed=seed)
        key = task.hub_splits.get(split, split)
        if key not in parts:
            raise ValueError(f"demo task has splits {sorted(parts)} (validation = test), "
                             f"not {split!r}")
        ds = parts[key]
    else:
        path, config = task.hub
        ds = datasets.load_dataset(path, config, split=task.hub_splits.get(split, split))
    if max_examples is not None:
        ds = ds.select(range(min(max_examples, len(ds))))
    return ds
