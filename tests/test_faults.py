"""Fault injection: each kind of file of a workdir damaged in turn; the rerun resumes from the
newest intact checkpoint with the losses of an uninterrupted run, or stops with one line, and
never loses an intact checkpoint.

One uninterrupted reference run and one run killed at step 5 (checkpoints 2 and 4, evaluations
at 2 and 4) are made once; every case damages a copy of one of them and reruns it through the
CLI (in-process, so the compiled programs are shared).
"""
import glob
import json
import os
import shutil

import numpy as np
import pytest

import tiny_runs
from unified_petl import cli
from unified_petl.train import load_delta, train
from unified_petl.train.config import load_config, override
from unified_petl.train.writer import read_metrics

STEPS, EVERY = 6, 2
OVERRIDES = [f"checkpoint_every={EVERY}", f"eval_every={EVERY}", "keep_checkpoints=3"]


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"reference": finished workdir, "killed": workdir of a run killed after step 5,
    "config": config file, "folder": base}."""
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    config_file = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                              eval_file, steps=STEPS)
    config = override(load_config(config_file), OVERRIDES)
    root = tmp_path_factory.mktemp("runs")
    reference, killed = str(root / "reference"), str(root / "killed")
    train(config, reference)

    def crash_after_5(step, state):
        if step == 5:
            raise Crash()

    with pytest.raises(Crash):
        train(config, killed, hooks=[crash_after_5])
    assert tiny_runs.checkpoint_steps(killed) == [2, 4]
    return {"reference": reference, "killed": killed, "config": config_file, "folder": folder}


def _records(workdir):
    """metrics.jsonl without the timing field: every loss and eval value, in order."""
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in read_metrics(workdir)]


def _rerun(capsys, runs, workdir):
    """Run `unified-petl train` on workdir; (exit code, stderr lines)."""
    capsys.readouterr()
    code = 0
    try:
        cli.main(["train", "--config", runs["config"], "--workdir", workdir]
                 + [f"--config.{o}" for o in OVERRIDES])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.splitlines()


def _truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


def _zero(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def _array_files(state_dir):
    return glob.glob(os.path.join(state_dir, "ocdbt.process_0", "d", "*"))


# What to damage in checkpoint 4 of the killed run (orbax's files of the `state` item, and
# our JSON `meta` item).
CHECKPOINT_FAULTS = {
    "array data": lambda d: [_truncate(p, 10) for p in _array_files(f"{d}/state")],
    "orbax _METADATA": lambda d: _truncate(f"{d}/state/_METADATA"),
    "ocdbt manifest": lambda d: _zero(f"{d}/state/manifest.ocdbt"),
    "meta": lambda d: _truncate(f"{d}/meta/metadata"),
}


@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(runs, capsys, tmp_path,
                                                                       fault):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["killed"], workdir)
    bad = os.path.join(workdir, "checkpoints", "4")
    CHECKPOINT_FAULTS[fault](bad)
    code, err = _rerun(capsys, runs, workdir)
    assert code == 0, err
    assert len(err) == 1 and err[0].startswith("unified-petl: warning: checkpoint 4 ") \
        and "resuming from checkpoint 2" in err[0] and "4.corrupt" in err[0], err
    assert _records(workdir) == _records(runs["reference"])  # exact, from step 2 on
    assert os.path.isdir(bad + ".corrupt")  # kept for inspection, invisible to orbax
    assert tiny_runs.checkpoint_steps(workdir) == [2, 4, 6]  # the intact 2 is still there
    assert json.load(open(os.path.join(workdir, "best", "best.json"))) == \
        json.load(open(os.path.join(runs["reference"], "best", "best.json")))


def test_no_readable_checkpoint_stops_with_one_line_and_changes_nothing(runs, capsys,
                                                                        tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["killed"], workdir)
    for step in (2, 4):
        _truncate(os.path.join(workdir, "checkpoints", str(step), "state", "_METADATA"))
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    code, err = _rerun(capsys, runs, workdir)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("unified-petl: error: no checkpoint in ") and "4: " in err[0] \
        and "2: " in err[0] and "nothing was changed" in err[0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_partial_last_line_of_metrics_is_set_aside(runs, capsys, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["killed"], workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "loss": 0.69')  # a write cut short by the kill
    code, err = _rerun(capsys, runs, workdir)
    assert code == 0 and len(err) == 1 and "metrics.jsonl: line(s) 8 " in err[0], err
    assert _records(workdir) == _records(runs["reference"])
    with open(os.path.join(workdir, "metrics.jsonl.corrupt")) as f:
        assert f.read() == '{"step": 6, "loss": 0.69\n'
    assert tiny_runs.checkpoint_steps(workdir) == [2, 4, 6]


def test_damaged_best_record_is_rebuilt_from_metrics(runs, capsys, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["killed"], workdir)
    record = os.path.join(workdir, "best", "best.json")
    kept = json.load(open(record))
    _truncate(record)
    code, err = _rerun(capsys, runs, workdir)
    assert code == 0 and len(err) == 1 and "rebuilt from the eval records" in err[0], err
    assert f"step {kept['step']}" in err[0]
    assert _records(workdir) == _records(runs["reference"])
    assert json.load(open(record)) == json.load(open(os.path.join(runs["reference"], "best",
                                                                  "best.json")))
    assert os.path.exists(record + ".corrupt")


def test_damaged_best_delta_is_set_aside_never_replaced_by_a_worse_one(runs, capsys, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["killed"], workdir)
    delta = os.path.join(workdir, "best", "delta.safetensors")
    _truncate(delta)
    code, err = _rerun(capsys, runs, workdir)
    assert code == 0 and len(err) == 1 and "cannot be used" in err[0], err
    assert _records(workdir) == _records(runs["reference"])
    reference_best = json.load(open(os.path.join(runs["reference"], "best", "best.json")))
    assert json.load(open(os.path.join(workdir, "best", "best.json"))) == reference_best
    assert os.path.exists(delta + ".corrupt")
    if reference_best["step"] >= 4:  # the resumed state's (4) or beaten after the resume
        base = _base(runs)
        _same_delta(load_delta(delta, base)[1], load_delta(
            os.path.join(runs["reference"], "best", "delta.safetensors"), base)[1])
    else:  # nothing beat it and no checkpoint holds it: no file rather than a worse one
        assert not os.path.exists(delta)


def test_finished_run_rewrites_a_damaged_delta_and_results(runs, capsys, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(runs["reference"], workdir)
    delta = os.path.join(workdir, "delta.safetensors")
    _truncate(delta)
    code, err = _rerun(capsys, runs, workdir)
    assert code == 0 and len(err) == 1 and "rewritten from checkpoint 6" in err[0], err
    base = _base(runs)
    _same_delta(load_delta(delta, base)[1],
                load_delta(os.path.join(runs["reference"], "delta.safetensors"), base)[1])

    results = os.path.join(workdir, "results.json")
    _truncate(results)
    code, err = _rerun(capsys, runs, workdir)
    assert code == 0 and len(err) == 1 and "results.json is unreadable" in err[0], err
    expected = json.load(open(os.path.join(runs["reference"], "results.json")))
    assert json.load(open(results))["eval"] == expected["eval"]
    assert os.path.exists(results + ".corrupt") and tiny_runs.checkpoint_steps(workdir) == [2, 4, 6]
    assert _records(workdir) == _records(runs["reference"])


def _base(runs):
    import unified_petl as up

    return up.load_pretrained(runs["folder"])


def _same_delta(a, b):
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_selection_rewrites_a_damaged_best_delta_only_from_its_own_step(tmp_path, capsys):
    """The tiny runs above select step 2 (accuracy does not move in 6 steps), so this pins
    the other branch: resumed AT the selected step, the state holds that very Δh."""
    from types import SimpleNamespace

    from unified_petl.train import save_delta, selection

    base = SimpleNamespace(fingerprint="f")
    state = {"step": 4}

    def save(path):  # as the trainer's save_trained_delta: the current state's Δh
        save_delta(path, "lora(r=1)", {}, base, step=state["step"])

    workdir = str(tmp_path)
    assert selection.Selection(workdir, "accuracy", save).update(4, {"loss": 0.5,
                                                                      "accuracy": 80.0})
    delta = os.path.join(workdir, "best", "delta.safetensors")
    _truncate(delta)
    capsys.readouterr()
    resumed = selection.Selection(workdir, "accuracy", save, resume_step=4)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "rewritten from checkpoint 4" in err[0], err
    assert resumed.best["step"] == 4 and selection.selected(workdir)[0] == delta
    assert os.path.exists(delta + ".corrupt")

    _truncate(delta)
    state["step"] = 6  # resumed later: no state holds step 4's Δh any more
    resumed = selection.Selection(workdir, "accuracy", save, resume_step=6)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "only if a later evaluation beats accuracy 80.0" in err[0], err
    assert resumed.best["step"] == 4 and not os.path.exists(delta)
    assert os.path.exists(delta + ".corrupt.2")
    with pytest.raises(ValueError, match="a damaged one was kept"):
        selection.selected(workdir)
    assert not resumed.update(6, {"loss": 0.4, "accuracy": 70.0})  # worse: still no file
    assert resumed.update(8, {"loss": 0.3, "accuracy": 90.0}) and os.path.exists(delta)
