"""The paper's configs (configs/xsum, configs/wmt_en_ro, configs/glue): every row loads, has the
trainer's keys and the paper's settings (the shared ones and the reference's row-specific
ones), its method builds on a tiny model of the same architecture, and its parameter count
matches the paper's "% params". Also the en-ro selection metric `loss_smoothed` against a
direct numpy computation on a tiny BART."""
import functools
import glob
import importlib.util
import os
import re

import jax
import numpy as np
import pytest
import transformers

import tiny_runs
import unified_petl as up
from conftest import TINY, TINY_ENCODER
from unified_petl.data import get_task
from unified_petl.delta.budget import count_for
from unified_petl.train import selection
from unified_petl.train.config import check_config, load_config, override, with_defaults

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = os.path.join(ROOT, "configs")
REQUIRED = ("base", "method", "task", "seed", "batch_size", "total_steps", "log_every",
            "eval_every", "checkpoint_every")
# folder -> (helper module, tasks each file is run with (None: no argument), shipped base
# whose parameters the paper's percentages refer to)
FOLDERS = {"xsum": ("xsum_common", (None,), "bart-large"),
           "wmt_en_ro": ("enro_common", (None,), "bart-large"),
           "glue": ("glue_common", ("mnli", "sst2", "mnli_1600"), "roberta-base")}
GENERATE_KEYS = {"num_beams", "max_length", "min_length", "length_penalty",
                 "no_repeat_ngram_size", "early_stopping"}


def _helper(folder):
    name = FOLDERS[folder][0]
    spec = importlib.util.spec_from_file_location(
        f"_test_{name}", os.path.join(CONFIGS, folder, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_files(folder):
    paths = glob.glob(os.path.join(CONFIGS, folder, "*.py"))
    return sorted(os.path.basename(p)[:-3] for p in paths if not p.endswith("_common.py"))


def _other_rows(folder):
    """Rows of other papers in the folder, with their own settings (configs/glue/
    sparse_common.py; tested in test_sparse_configs.py), not the unified view's."""
    path = os.path.join(CONFIGS, folder, "sparse_common.py")
    if not os.path.exists(path):
        return []
    import sys

    sys.path.insert(0, os.path.dirname(path))  # it imports glue_common
    try:
        spec = importlib.util.spec_from_file_location(f"_test_sparse_{folder}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(path))
    return sorted(module.ROWS)


def _row_files(folder):
    """The files of the paper's rows."""
    return [f for f in _all_files(folder) if f not in _other_rows(folder)]


ALL = [(folder, row, task) for folder in FOLDERS for row in _row_files(folder)
       for task in FOLDERS[folder][1]]


def _load(folder, row, task):
    path = os.path.join(CONFIGS, folder, row + ".py")
    return load_config(f"{path}:{task}" if task else path)


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_row_has_a_file_and_every_file_a_row(folder):
    rows = _helper(folder).ROWS
    assert sorted(list(rows) + _other_rows(folder)) == _all_files(folder)


@pytest.mark.parametrize("folder,row,task", ALL)
def test_config_loads_with_the_trainers_keys(folder, row, task):
    config = _load(folder, row, task)
    for key in REQUIRED:
        assert key in config, f"{folder}/{row}.py lacks {key}"
    check_config(with_defaults(config))
    method = up.parse_method(config.method)
    assert method.name == re.sub(r"\s+", "", _helper(folder).ROWS[row][0])
    assert config.eval.selection in ("rouge2", "bleu", "loss", "loss_smoothed", "accuracy")
    # the selection metric is one this task's evaluation reports
    assert selection.resolve(get_task(config.task), config.eval.selection,
                             config.eval.generate) == config.eval.selection
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
    assert (xsum.optim.b1, xsum.optim.b2, xsum.optim.eps) == (0.9, 0.999, 1e-8)
    assert (xsum.seed, xsum.eval_every, xsum.dtype) == (42, 3000, "bfloat16")
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
    assert (enro.generate.num_beams, enro.generate.max_length, enro.generate.min_length,
            enro.generate.no_repeat_ngram_size, enro.generate.length_penalty) == (
        5, 150, 1, 0, 1.0)
    assert (enro.label_smoothing, enro.optim.weight_decay, enro.eval_every) == (0.1, 0.01, 5000)
    # the reference selects en-ro on its label-smoothed eval loss (trainer_seq2seq.py)
    assert enro.eval.selection == "loss_smoothed" and not enro.eval.generate

    for task, size in (("mnli", 392_702), ("sst2", 67_349)):
        glue = _load("glue", "mam", task)
        assert glue.task == task and glue.base == "roberta-base"
        assert glue.total_steps == 10 * (size // 32) and glue.eval_every == size // 32
        assert (glue.optim.lr, glue.optim.warmup_ratio, glue.optim.weight_decay,
                glue.optim.b2, glue.optim.eps) == (1e-4, 0.06, 0.1, 0.98, 1e-6)
        assert (glue.optim.max_grad_norm, glue.label_smoothing, glue.seed) == (1.0, 0.0, 42)
        assert glue.data.max_source_len == 512
        assert glue.eval.selection == "accuracy"
        assert glue.data.max_eval_examples == 0  # the whole validation set
    assert _load("glue", "mam", None).task == "mnli"  # the default argument
    with pytest.raises(ValueError, match="sst2"):
        _load("glue", "mam", "qnli")


def test_every_row_decays_to_the_references_lr_end():
    """transformers 4.9's "polynomial" schedule (the reference's lr_scheduler_type, power 1)
    decays to lr_end = 1e-7, not 0."""
    for folder, row, task in ALL:
        assert _load(folder, row, task).optim.end_lr == 1e-7, f"{folder}/{row}"


def test_row_specific_settings():
    """The settings the reference used for one row only (ROW_OVERRIDES), and only there."""
    # en-ro prefix tuning: label smoothing 0 and weight decay 0 (exps/run_en_ro.sh, ~60-63)
    for row in _row_files("wmt_en_ro"):
        enro = _load("wmt_en_ro", row, None)
        want = (0.0, 0.0) if row == "prefix" else (0.1, 0.01)
        assert (enro.label_smoothing, enro.optim.weight_decay) == want, row
        assert enro.eval.selection == "loss_smoothed", row
    # XSum: one set of settings for every row
    assert _helper("xsum").ROW_OVERRIDES == {}
    for row in ("prefix", "full"):
        xsum = _load("xsum", row, None)
        assert (xsum.label_smoothing, xsum.optim.weight_decay, xsum.optim.lr) == (
            0.1, 0.01, 5e-5)
    # GLUE full fine-tuning: lr 1e-5 (RoBERTa's GLUE recipe), every PETL row 1e-4
    for task in FOLDERS["glue"][1]:
        for row in _row_files("glue"):
            glue = _load("glue", row, task)
            assert glue.optim.lr == (1e-5 if row == "full" else 1e-4), (row, task)
            assert (glue.optim.warmup_ratio, glue.optim.weight_decay) == (0.06, 0.1)
    # every override names a row and a key the shared settings have
    for folder in FOLDERS:
        helper = _helper(folder)
        for row, assignments in helper.ROW_OVERRIDES.items():
            assert row in helper.ROWS, f"{folder}: override for unknown row {row!r}"
            base = _load(folder, "mam", FOLDERS[folder][1][0])
            override(base, assignments)  # raises on an unknown key or a wrong type


def test_mnli_1600_selects_on_the_first_1600_matched_dev_pairs():
    whole = _load("glue", "mam", "mnli")
    first = _load("glue", "mam", "mnli_1600")
    assert (whole.task, whole.data.max_eval_examples) == ("mnli", 0)
    assert (first.task, first.data.max_eval_examples, first.data.eval_split) == (
        "mnli", 1600, "validation")
    assert get_task("mnli").hub_splits["validation"] == "validation_matched"
    # nothing else changes: same steps, schedule and selection metric
    for key in ("total_steps", "eval_every", "batch_size", "seed"):
        assert first[key] == whole[key]
    assert first.optim.to_dict() == whole.optim.to_dict()
    assert first.eval.to_dict() == whole.eval.to_dict()


def test_losses_select_lowest_first(tmp_path):
    enro = get_task("wmt16_en_ro")
    assert selection.resolve(enro, "loss_smoothed", generate=False) == "loss_smoothed"
    assert not selection.greater_is_better("loss_smoothed")
    assert selection.greater_is_better("bleu") and selection.greater_is_better("accuracy")
    best = selection.Selection(str(tmp_path), "loss_smoothed", None, enabled=False)
    assert best.update(1, {"loss_smoothed": 3.0, "loss": 2.0})
    assert not best.update(2, {"loss_smoothed": 3.5, "loss": 1.0})  # loss is not the metric
    assert best.update(3, {"loss_smoothed": 2.5, "loss": 2.2})
    assert best.best == {"step": 3, "metric": "loss_smoothed", "value": 2.5}


@pytest.fixture(scope="module")
def tiny_bart_run(tmp_path_factory):
    """A tiny one-layer BART folder (with tokenizer) and a tiny XSum-like eval file."""
    folder = tiny_runs.model_folder(tmp_path_factory, "bart")
    data = str(tmp_path_factory.mktemp("data"))
    return folder, tiny_runs.write_data(data, "xsum", n_train=8, n_eval=19)


def test_loss_smoothed_is_the_label_smoothed_loss_per_target_token(tiny_bart_run):
    """The trainer's evaluation reports loss_smoothed = mean over every target token of the
    eval set of (1-ε)·NLL + ε·mean_vocab(-log p) (transformers' LabelSmoother, which the
    reference applies to its eval loss), with the config's ε. Checked against numpy on the
    logits of transformers' PyTorch BART, one unpadded example at a time, while the trainer
    evaluates padded batches of 16 rows (19 examples: the second batch mostly filler)."""
    import torch

    from unified_petl.train.loop import _evaluate
    from unified_petl.train.setup import build_run, encode_split
    from unified_petl.train.step import make_eval_step, make_mesh, replicate, split_trainable

    folder, (train_file, eval_file) = tiny_bart_run
    config = with_defaults(tiny_runs.tiny_config(folder, train_file, eval_file, task="xsum",
                                                 method="none"))  # the base: Δh plays no part
    config.data.buckets = (16,)  # one source shape: fewer compiles
    config.data.eval_batch_size = 16
    run = build_run(config)
    encoded = encode_split(run, config, config.data.eval_split)
    mesh = make_mesh(1)
    delta = up.init_delta(run.model, jax.random.key(0), params=run.params)
    trainable, frozen = split_trainable(run.full, run.params, delta)
    eval_step = make_eval_step(run.model, mesh)  # ε-free: one program serves every ε
    trainable, frozen = replicate(trainable, mesh), replicate(frozen, mesh)

    torch_model = transformers.BartForConditionalGeneration.from_pretrained(folder).eval()
    nll, uniform = [], []
    for i in range(len(encoded)):
        example = encoded[i]
        with torch.no_grad():  # decoder input = labels shifted right after token 2
            logits = torch_model(input_ids=torch.tensor([example["input_ids"]]),
                                 labels=torch.tensor([example["labels"]])).logits
        logits = logits[0].double().numpy()
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        nll.extend(-logp[np.arange(len(example["labels"])), example["labels"]])
        uniform.extend(-logp.mean(-1))
    nll, uniform = np.array(nll), np.array(uniform)

    for epsilon in (0.1, 0.3, 0.0):
        config.label_smoothing = epsilon
        got = _evaluate(eval_step, trainable, frozen, encoded, run, config, mesh)
        want = np.mean((1 - epsilon) * nll + epsilon * uniform)
        assert got["loss_smoothed"] == pytest.approx(want, rel=1e-5), epsilon
        assert got["loss"] == pytest.approx(nll.mean(), rel=1e-5)
        if epsilon:  # the smoothing term really moves the number
            assert abs(got["loss_smoothed"] - got["loss"]) > 1e-3
        else:
            assert got["loss_smoothed"] == pytest.approx(got["loss"], rel=1e-12)


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
