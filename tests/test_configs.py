"""The paper's configs (configs/xsum, configs/wmt_en_ro, configs/glue): every row loads, has the
trainer's keys and the paper's settings, its method builds on a tiny model of the same
architecture, and its parameter count matches the paper's "% params"."""
import functools
import glob
import importlib.util
import os
import re

import pytest
import transformers

import unified_petl as up
from conftest import TINY, TINY_ENCODER
from unified_petl.delta.budget import count_for
from unified_petl.train.config import check_config, load_config, override, with_defaults

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = os.path.join(ROOT, "configs")
REQUIRED = ("base", "method", "task", "seed", "batch_size", "total_steps", "log_every",
            "eval_every", "checkpoint_every")
# folder -> (helper module, tasks each file is run with (None: no argument), shipped base
# whose parameters the paper's percentages refer to)
FOLDERS = {"xsum": ("xsum_common", (None,), "bart-large"),
           "wmt_en_ro": ("enro_common", (None,), "bart-large"),
           "glue": ("glue_common", ("mnli", "sst2"), "roberta-base")}
GENERATE_KEYS = {"num_beams", "max_length", "min_length", "length_penalty",
                 "no_repeat_ngram_size", "early_stopping"}


def _helper(folder):
    name = FOLDERS[folder][0]
    spec = importlib.util.spec_from_file_location(
        f"_test_{name}", os.path.join(CONFIGS, folder, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row_files(folder):
    paths = glob.glob(os.path.join(CONFIGS, folder, "*.py"))
    return sorted(os.path.basename(p)[:-3] for p in paths if not p.endswith("_common.py"))


ALL = [(folder, row, task) for folder in FOLDERS for row in _row_files(folder)
       for task in FOLDERS[folder][1]]


def _load(folder, row, task):
    path = os.path.join(CONFIGS, folder, row + ".py")
    return load_config(f"{path}:{task}" if task else path)


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_row_has_a_file_and_every_file_a_row(folder):
    rows = _helper(folder).ROWS
    assert sorted(rows) == _row_files(folder)


@pytest.mark.parametrize("folder,row,task", ALL)
def test_config_loads_with_the_trainers_keys(folder, row, task):
    config = _load(folder, row, task)
    for key in REQUIRED:
        assert key in config, f"{folder}/{row}.py lacks {key}"
    check_config(with_defaults(config))
    method = up.parse_method(config.method)
    assert method.name == re.sub(r"\s+", "", _helper(folder).ROWS[row][0])
    assert config.eval.selection in ("rouge2", "bleu", "loss", "accuracy")
    # the docstring holds the exact command
    path = os.path.join(CONFIGS, folder, row + ".py")
    with open(path) as f:
        doc = f.read()
    command = f"unified-petl train --config configs/{folder}/{row}.py{':' + task if task else ''}"
    assert command in doc
    # overridable from the command line
    override(config, ["optim.lr=3e-4", "total_steps=7"])
    assert config.optim.lr == 3e-4 and config.total_steps == 7


def test_paper_settings():
    xsum = _load("xsum", "mam", None)
    assert (xsum.base, xsum.task, xsum.batch_size, xsum.total_steps) == (
        "facebook/bart-large", "xsum", 64, 100_000)
    assert (xsum.optim.lr, xsum.optim.warmup_steps, xsum.optim.weight_decay,
            xsum.optim.max_grad_norm, xsum.label_smoothing) == (5e-5, 0, 0.01, 0.1, 0.1)
    assert (xsum.data.max_source_len, xsum.data.max_eval_examples) == (512, 1600)
    assert set(xsum.generate.keys()) == GENERATE_KEYS
    assert (xsum.generate.num_beams, xsum.generate.min_length, xsum.generate.max_length,
            xsum.generate.no_repeat_ngram_size) == (6, 10, 60, 3)
    assert (xsum.eval.selection, xsum.eval.generate) == ("rouge2", True)

    enro = _load("wmt_en_ro", "mam", None)
    assert (enro.base, enro.task, enro.total_steps, enro.max_tokens) == (
        "facebook/mbart-large-cc25", "wmt16_en_ro", 50_000, 16384)
    assert (enro.optim.b2, enro.optim.eps, enro.optim.max_grad_norm) == (0.98, 1e-6, 1.0)
    assert (enro.data.max_source_len, enro.data.max_target_len) == (150, 150)
    assert enro.base_overrides.attention_dropout == 0.0
    assert (enro.generate.num_beams, enro.generate.max_length) == (5, 150)
    assert enro.eval.selection == "loss" and not enro.eval.generate

    for task, size in (("mnli", 392_702), ("sst2", 67_349)):
        glue = _load("glue", "mam", task)
        assert glue.task == task and glue.base == "roberta-base"
        assert glue.total_steps == 10 * (size // 32) and glue.eval_every == size // 32
        assert (glue.optim.lr, glue.optim.warmup_ratio, glue.optim.weight_decay,
                glue.optim.b2, glue.optim.eps) == (1e-4, 0.06, 0.1, 0.98, 1e-6)
        assert glue.eval.selection == "accuracy"
    assert _load("glue", "mam", None).task == "mnli"  # the default argument
    with pytest.raises(ValueError, match="sst2"):
        _load("glue", "mam", "qnli")


@functools.lru_cache(maxsize=None)
def _tiny_config(kind):
    one_layer = {**TINY, "encoder_layers": 1, "decoder_layers": 1}  # the Δh points of a layer
    if kind == "bart":
        return transformers.BartConfig(**one_layer)
    if kind == "mbart":
        return transformers.MBartConfig(**one_layer, scale_embedding=True)
    return transformers.RobertaConfig(**{**TINY_ENCODER, "num_hidden_layers": 1,
                                         "max_position_embeddings": 66},
                                      pad_token_id=1)


TINY_KIND = {"xsum": "bart", "wmt_en_ro": "mbart", "glue": "roberta"}


@pytest.mark.parametrize("folder,row", [(f, r) for f in FOLDERS for r in _row_files(f)])
def test_method_builds_on_a_tiny_model(folder, row):
    """up.build(tiny config of the same architecture, config.method): Δh variables appear."""
    config = _load(folder, row, FOLDERS[folder][1][0])
    num_labels = {"mnli": 3, "sst2": 2}.get(config.task)
    model = up.build(_tiny_config(TINY_KIND[folder]), config.method, num_labels=num_labels)
    delta = up.shape_tree(model, "delta")
    if row != "full" or num_labels:
        assert delta, f"{folder}/{row}: method {config.method} made no Δh variables"


def _count_key(base, method):
    """What the paper's count depends on: form, place, size, targets (not insertion,
    composition, init or dropout)."""
    terms = up.parse_method(method).terms
    return base, tuple(sorted((t.form, t.at, t.size, t.targets, t.pattern) for t in terms))


def _paper_groups():
    """Rows with a paper % grouped by count key; keys test_delta.py already counts are left
    out (each count_for traces a BART-large: seconds on a small CPU)."""
    try:
        from test_delta import PAPER as checked
    except ImportError:
        checked = []
    done = {_count_key(base, method) for base, method, _ in checked}
    groups = {}
    for folder in FOLDERS:
        base = FOLDERS[folder][2]
        for name, spec in _helper(folder).ROWS.items():
            if spec[-2] is not None and _count_key(base, spec[0]) not in done:
                groups.setdefault(_count_key(base, spec[0]), []).append((name, spec[0], spec[-2]))
    return [(key[0], rows) for key, rows in sorted(groups.items(), key=str)]


@pytest.mark.parametrize("base,rows", _paper_groups(),
                         ids=lambda v: v if isinstance(v, str) else v[0][0])
def test_count_matches_the_papers_percent(base, rows):
    """count_for(shipped base, method)['percent_paper'] is the paper's figure (its tables round
    to one decimal and write 0.1% for prompt tuning's 0.05%). Rows that differ only in
    insertion, composition, init or dropout have one count."""
    got = count_for(base, rows[0][1])["percent_paper"]
    for name, method, percent in rows:
        tolerance = 0.06 if percent <= 0.1 else max(0.06, 0.05 * percent)
        assert abs(got - percent) <= tolerance, f"{name}: {method} on {base}: {got:.3f}% vs " \
                                                f"paper {percent}%"
