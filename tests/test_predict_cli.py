"""eval and predict through the CLI on a tiny trained run: WORKDIR/config.json is enough, a
whole test split is scored, predictions are kept as JSONL, errors are one line."""
import json
import os

import numpy as np
import pytest

from unified_petl import cli

import tiny_runs

N_TEST = 23  # not a multiple of any batch size: the last batch has filler rows


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _error_line(capsys, argv):
    """Run the CLI in-process; return its stderr, asserting exit code 2 and ONE line."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unified-petl: error: "), err
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny SST-2 run trained through the CLI (6 steps, evaluated at 3 and 6, best/ kept),
    with a cap of 4 evaluation examples and a test file of N_TEST examples."""
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    test_dir = os.path.join(data, "test")
    os.makedirs(test_dir)
    _, test_file = tiny_runs.write_data(test_dir, "sst2", n_train=1, n_eval=N_TEST, seed=3)
    config = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                         eval_file, steps=6)
    workdir = str(tmp_path_factory.mktemp("run"))
    cli.main(["train", "--config", config, "--workdir", workdir, "--config.eval_every=3",
              "--config.data.max_eval_examples=4", f"--config.data.test_files={test_file}"])
    return {"workdir": workdir, "config": config, "test": test_file, "eval": eval_file,
            "data": data}


def _accuracy(records):
    return 100.0 * np.mean([r["output"] == r["reference"] for r in records])


def test_eval_needs_only_the_workdir(run, capsys):
    """Before: --config was required. After: WORKDIR/config.json is read; the run's own
    evaluation (capped at data.max_eval_examples=4) is repeated and its predictions kept."""
    workdir = run["workdir"]
    capsys.readouterr()
    cli.main(["eval", "--workdir", workdir])
    printed = json.loads(capsys.readouterr().out)
    results = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert results["step"] == 6 and results["split"] == "validation"
    assert results["examples"] == 4 and printed == results["eval"]
    records = _jsonl(os.path.join(workdir, "predictions", "eval_latest_validation.jsonl"))
    assert [r["id"] for r in records] == [0, 1, 2, 3]
    rows = [json.loads(line) for line in open(run["eval"])][:4]
    assert [r["input"] for r in records] == [r["sentence"] for r in rows]
    assert [r["reference"] for r in records] == [r["label"] for r in rows]
    assert {r["output_label"] for r in records} <= {"negative", "positive"}
    # accuracy is a percentage, and it is the share of the kept predictions that are right
    assert results["eval"]["accuracy"] == pytest.approx(_accuracy(records))
    # the same evaluation as the trainer's final one (results.json), on the same 4 examples
    final = json.load(open(os.path.join(workdir, "results.json")))["eval"]
    assert results["eval"]["accuracy"] == pytest.approx(final["accuracy"])
    assert results["eval"]["loss"] == pytest.approx(final["loss"], rel=1e-5)


def test_best_on_the_whole_test_split(run, capsys):
    """Before: no --split; data.max_eval_examples capped every split. After: every one of the
    N_TEST test examples is scored with the selected Δh; the cap is for validation only."""
    workdir = run["workdir"]
    cli.main(["eval", "--workdir", workdir, "--best", "--split", "test"])
    out = capsys.readouterr()
    results = json.load(open(os.path.join(workdir, "eval_best_results_test.json")))
    best = json.load(open(os.path.join(workdir, "best", "best.json")))
    assert results["step"] == best["step"] and results["selected"] is True
    assert results["examples"] == N_TEST and "23 examples of split 'test'" in out.err
    records = _jsonl(os.path.join(workdir, "predictions", "eval_best_test.jsonl"))
    rows = [json.loads(line) for line in open(run["test"])]
    assert len(records) == N_TEST and [r["input"] for r in records] == [r["sentence"]
                                                                      for r in rows]
    assert [r["reference"] for r in records] == [r["label"] for r in rows]
    assert results["eval"]["accuracy"] == pytest.approx(_accuracy(records))
    # --max-examples asks for a cap
    cli.main(["eval", "--workdir", workdir, "--best", "--split", "test", "--max-examples", "5"])
    capsys.readouterr()
    assert json.load(open(os.path.join(workdir, "eval_best_results_test.json")))[
        "examples"] == 5


def test_predict_a_text_file_and_a_split(run, capsys, tmp_path):
    """predict --input: one input per line (blank lines skipped, ids = line numbers); the
    predictions equal those of the same sentences scored as a split."""
    workdir = run["workdir"]
    rows = [json.loads(line) for line in open(run["test"])]
    text = tmp_path / "inputs.txt"
    text.write_text(rows[0]["sentence"] + "\n\n" + "\n".join(r["sentence"] for r in rows[1:])
                    + "\n")
    out = str(tmp_path / "preds.jsonl")
    capsys.readouterr()
    cli.main(["predict", "--workdir", workdir, "--best", "--input", str(text), "--out", out])
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == N_TEST and summary["predictions"] == out
    from_text = _jsonl(out)
    assert [r["id"] for r in from_text] == [1] + list(range(3, N_TEST + 2))
    assert all("reference" not in r for r in from_text)

    cli.main(["predict", "--workdir", workdir, "--best", "--split", "test"])
    summary = json.loads(capsys.readouterr().out)
    path = os.path.join(workdir, "predictions", "predict_best_test.jsonl")
    assert summary["predictions"] == path and summary["examples"] == N_TEST
    from_split = _jsonl(path)
    assert [r["output"] for r in from_text] == [r["output"] for r in from_split]
    assert summary["eval"]["accuracy"] == pytest.approx(_accuracy(from_split))


def test_overrides_apply_to_the_workdir_config(run, capsys):
    workdir = run["workdir"]
    err = _error_line(capsys, ["eval", "--workdir", workdir, "--config.eval.bleu_tokenize=x"])
    assert "eval.bleu_tokenize='x'" in err and "moses" in err
    err = _error_line(capsys, ["eval", "--workdir", workdir, "--config.nope=1"])
    assert "unknown config key --config.nope" in err


def test_eval_with_another_method_is_trains_message(run, capsys):
    """Before: orbax's 'tree structures do not match'. After: the trainer's check."""
    err = _error_line(capsys, ["eval", "--workdir", run["workdir"], "--config.method=pa(r=4)"])
    assert "holds a run of method 'lora(r=4)', not 'pa(r=4)'" in err
    assert "config.json" in err


def test_unwritable_results_print_the_scores_then_fail(run, capsys):
    """Before: the scores were computed, then a traceback from open(). After: the scores are
    printed, then one line names the file."""
    workdir = run["workdir"]
    blocked = os.path.join(workdir, "eval_results_validation.json")
    os.makedirs(blocked)  # a path that cannot be written (also as root)
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["eval", "--workdir", workdir, "--split", "validation"])
    finally:
        os.rmdir(blocked)
    assert e.value.code == 2
    out = capsys.readouterr()
    assert "accuracy" in json.loads(out.out)
    assert out.err.count("\n") == 1 and blocked in out.err and "printed above" in out.err
    assert not os.path.exists(blocked + ".tmp")  # nothing half-written left behind


@pytest.mark.parametrize("argv,expected", [
    (["--split", "train2"], "split 'train2' has no local file"),
    (["--split", "test", "--config.data.test_files="], "set --config.data.test_files=PATH"),
    (["--split", "test", "--config.data.max_eval_examples=3"], "write --max-examples N"),
    (["--max-examples", "-1"], "must be >= 0"),
])
def test_eval_split_errors_are_one_line(run, capsys, argv, expected):
    assert expected in _error_line(capsys, ["eval", "--workdir", run["workdir"]] + argv)


def test_predict_errors_are_one_line(run, capsys, tmp_path):
    workdir = run["workdir"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("w5 w6\nw7 caf\xe9\n".encode("latin-1"))
    err = _error_line(capsys, ["predict", "--workdir", workdir, "--input", str(bad)])
    assert f"{bad} line 2 is not UTF-8" in err
    err = _error_line(capsys, ["predict", "--workdir", workdir, "--input", str(bad), "--split",
                               "test"])
    assert "not allowed with argument" in err
    err = _error_line(capsys, ["predict", "--workdir", workdir, "--out", str(tmp_path)])
    assert f"cannot write {tmp_path}" in err
    err = _error_line(capsys, ["predict", "--workdir", workdir, "--input", "/nowhere.txt"])
    assert "/nowhere.txt not found" in err


def test_missing_workdir_or_config_is_one_line(run, capsys, tmp_path):
    err = _error_line(capsys, ["eval", "--workdir", str(tmp_path / "none")])
    assert "config.json not found" in err and "--config" in err
    err = _error_line(capsys, ["eval", "--workdir", str(tmp_path / "none"), "--config",
                               run["config"]])
    assert "not found" in err


# ----------------------------------------------------------------------------- en-ro
N_ENRO_TEST = 7
DOTTED = [f"w{i}.w{i + 1}" for i in range(5, 15)]  # one token each: 13a splits it, Moses not


def _enro_tokenizer(folder: str) -> list[str]:
    """An MBartTokenizer (the cc25 language codes) over the tiny model's 99 tokens whose
    words include DOTTED ones; returns the plain words it knows."""
    from transformers import MBartTokenizer
    from transformers.models.mbart.tokenization_mbart import FAIRSEQ_LANGUAGE_CODES

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(code, 0.0) for code in FAIRSEQ_LANGUAGE_CODES] + [("<mask>", 0.0)]
    words = [f"w{i}" for i in range(99 - len(vocab) - len(DOTTED))]
    vocab += [(f"▁{w}", -1.0) for w in words + DOTTED]
    MBartTokenizer(vocab=vocab, src_lang="en_XX", tgt_lang="ro_RO").save_pretrained(folder)
    return words


@pytest.fixture(scope="module")
def enro(tmp_path_factory, tiny_checkpoint):
    """A tiny mBART en-ro run as the paper's configs set it up: selection on the loss of
    the first 2 validation pairs, no decoding during training, BLEU with Moses tokens."""
    import shutil

    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = str(tmp_path_factory.mktemp("mbart") / "base")
    shutil.copytree(tiny_checkpoint("mbart", layers=1), folder)
    words = _enro_tokenizer(folder)
    data = str(tmp_path_factory.mktemp("enro_data"))
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 16), ("eval", 6), ("test", N_ENRO_TEST)):
        rows = []
        for _ in range(n):
            en = [words[int(i)] for i in rng.integers(5, len(words), size=4)]
            ro = en[::-1][:3] + [DOTTED[int(rng.integers(len(DOTTED)))]]
            rows.append({"translation": {"en": " ".join(en), "ro": " ".join(ro)}})
        files[split] = os.path.join(data, f"enro_{split}.jsonl")
        with open(files[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    config = tiny_runs.write_config_file(os.path.join(data, "enro.py"), folder, files["train"],
                                         files["eval"], task="wmt16_en_ro", steps=4)
    workdir = str(tmp_path_factory.mktemp("enro_run"))
    cli.main(["train", "--config", config, "--workdir", workdir, "--config.eval_every=2",
              "--config.data.max_eval_examples=2", "--config.eval.generate=false",
              "--config.eval.bleu_tokenize=moses", f"--config.data.test_files={files['test']}",
              "--config.generate.num_beams=2", "--config.generate.max_length=8",
              "--config.base_overrides.attention_dropout=0.0"])
    return {"workdir": workdir, "test": files["test"]}


def _moses_bleu(predictions, references):
    """The reference's exps/romanian_postprocess.sh, with sacremoses and sacrebleu called
    directly: post-processing, `tokenizer.perl -no-escape -l ro`, `sacrebleu -tok none -s none`."""
    import sacrebleu
    from sacremoses import MosesTokenizer

    from unified_petl.evaluate import romanian_postprocess

    tok = MosesTokenizer(lang="ro")

    def prep(texts):
        return [tok.tokenize(romanian_postprocess(t), escape=False, return_str=True)
                for t in texts]

    return sacrebleu.corpus_bleu(prep(predictions), [prep(references)], tokenize="none",
                                 smooth_method="none")


def test_enro_test_split_decoded_whole_and_scored_as_the_reference(enro, capsys):
    """Before: the test split was capped at data.max_eval_examples (2) and not decoded (en-ro
    trains with eval.generate=false), and BLEU always used 13a. After: every test pair is
    decoded with the config's beam search and scored with the configured tokenisation."""
    import sacrebleu

    from unified_petl.evaluate import romanian_postprocess

    workdir = enro["workdir"]
    cli.main(["eval", "--workdir", workdir, "--best", "--split", "test"])
    capsys.readouterr()
    results = json.load(open(os.path.join(workdir, "eval_best_results_test.json")))
    assert results["examples"] == N_ENRO_TEST
    records = _jsonl(os.path.join(workdir, "predictions", "eval_best_test.jsonl"))
    rows = [json.loads(line)["translation"] for line in open(enro["test"])]
    assert [r["input"] for r in records] == [r["en"] for r in rows]
    assert [r["reference"] for r in records] == [r["ro"] for r in rows]  # every pair scored
    outputs = [r["output"] for r in records]
    assert any(outputs)
    moses = _moses_bleu(outputs, [r["ro"] for r in rows])
    got = results["eval"]
    assert got["bleu_tokenize"] == "moses"
    assert got["bleu"] == pytest.approx(moses.score, abs=1e-9)
    assert (got["sys_len"], got["ref_len"]) == (moses.sys_len, moses.ref_len)

    cli.main(["eval", "--workdir", workdir, "--best", "--split", "test",
              "--config.eval.bleu_tokenize=13a"])
    capsys.readouterr()
    got = json.load(open(os.path.join(workdir, "eval_best_results_test.json")))["eval"]
    plain = sacrebleu.corpus_bleu([romanian_postprocess(o) for o in outputs],
                                  [[romanian_postprocess(r["ro"]) for r in rows]],
                                  tokenize="13a")
    assert got["bleu_tokenize"] == "13a" and got["bleu"] == pytest.approx(plain.score)
    assert got["ref_len"] == plain.ref_len > moses.ref_len  # 13a splits w5.w6, Moses not

    # predict on a text file decodes the same translations as the split
    text = os.path.join(os.path.dirname(enro["test"]), "en.txt")
    with open(text, "w") as f:
        f.write("\n".join(r["en"] for r in rows[:3]) + "\n")
    cli.main(["predict", "--workdir", workdir, "--best", "--input", text])
    summary = json.loads(capsys.readouterr().out)
    assert [r["output"] for r in _jsonl(summary["predictions"])] == outputs[:3]

    # without --split: the run's own evaluation (2 validation pairs, loss only), as before
    cli.main(["eval", "--workdir", workdir, "--best"])
    capsys.readouterr()
    own = json.load(open(os.path.join(workdir, "eval_best_results.json")))
    assert own["examples"] == 2 and "bleu" not in own["eval"] and own["predictions"] is None
