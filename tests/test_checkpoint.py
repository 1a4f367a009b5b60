"""Checkpoints: exact resume after a crash, NaN stops cleanly, Δh files tied to their base."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import unified_petl as up
from unified_petl.train import (Checkpointer, CheckpointMismatch, TrainingDiverged, load_delta,
                                save_delta, train)
from unified_petl.train import loop
from unified_petl.train.writer import read_metrics

import tiny_runs


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    return folder, train_file, eval_file


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_resume_after_crash_is_exact(setup, tmp_path):
    folder, train_file, eval_file = setup
    # MAM: prefix MLP + adapter, with dropout: data order, dropout keys and Adam moments
    # must all be restored for the losses to match bit for bit.
    config = tiny_runs.tiny_config(folder, train_file, eval_file, method="mam(l=2, r=4, "
                                   "hidden=8)", total_steps=7, checkpoint_every=2)
    whole = str(tmp_path / "whole")
    train(config, whole)

    def crash_after_5(step, state):
        if step == 5:
            raise Crash()

    broken = str(tmp_path / "broken")
    with pytest.raises(Crash):
        train(config, broken, hooks=[crash_after_5])
    assert Checkpointer(os.path.join(broken, "checkpoints")).latest_step() == 4
    assert max(_losses(broken)) == 5  # the crashed run logged a step past its checkpoint
    train(config, broken)  # resumes from step 4

    expected, got = _losses(whole), _losses(broken)
    assert sorted(got) == list(range(1, 8))  # step 5 was replaced, not duplicated
    assert got == expected  # exact equality, not approximate
    a = load_delta(os.path.join(whole, "delta.safetensors"), up.load_pretrained(folder))[1]
    b = load_delta(os.path.join(broken, "delta.safetensors"), up.load_pretrained(folder))[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    results = json.load(open(os.path.join(broken, "results.json")))
    assert results["step"] == 7 and "accuracy" in results["eval"]
    # only the last keep_checkpoints (2) remain
    assert Checkpointer(os.path.join(broken, "checkpoints")).all_steps() == [6, 7]


def test_nan_stops_and_keeps_last_good_checkpoint(setup, tmp_path, monkeypatch):
    folder, train_file, eval_file = setup
    # Inject a NaN: from step 4 on, the real step's result is poisoned (Δh and loss).
    make_real = loop.make_train_step

    def make_poisoned(*args, **kwargs):
        real = make_real(*args, **kwargs)

        def step(state, frozen, batch):
            state, metrics = real(state, frozen, batch)
            if int(state.step) >= 4:
                nan = jax.tree.map(lambda x: x * jnp.nan, state.trainable)
                state = state.replace(trainable=nan)
                metrics = dict(metrics, loss=jnp.float32(jnp.nan), finite=jnp.float32(0))
            return state, metrics
        return step

    monkeypatch.setattr(loop, "make_train_step", make_poisoned)
    config = tiny_runs.tiny_config(folder, train_file, eval_file, total_steps=20,
                                   checkpoint_every=3, log_every=5)
    workdir = str(tmp_path / "nan")
    with pytest.raises(TrainingDiverged, match=r"diverged at step 4: loss nan.*last good "
                       r"checkpoint \(step 3\).*intact") as e:
        train(config, workdir)
    assert "\n" not in str(e.value) and "optim.lr" in str(e.value)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.all_steps() == [3]
    meta = ckpt.read_meta()
    assert meta["step"] == 3 and meta["data"] == {"epoch": 0, "position": 3}
    ckpt.close()
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    # the kept checkpoint is good: the unpoisoned trainer resumes from it
    monkeypatch.setattr(loop, "make_train_step", make_real)

    def stop_at_5(step, state):
        if step == 5:
            raise Crash()

    with pytest.raises(Crash):
        train(config, workdir, hooks=[stop_at_5])
    losses = _losses(workdir)
    assert sorted(losses) == [5] and np.isfinite(losses[5])


def test_workdir_of_another_base_is_refused(setup, tmp_path):
    folder, train_file, eval_file = setup
    config = tiny_runs.tiny_config(folder, train_file, eval_file, total_steps=2,
                                   checkpoint_every=1)
    workdir = str(tmp_path / "run")
    train(config, workdir)
    config.random_init = True  # same architecture, other weights: another fingerprint
    with pytest.raises(CheckpointMismatch, match="fingerprint"):
        train(config, workdir)
    config.random_init = False
    config.method = "bitfit"
    with pytest.raises(CheckpointMismatch, match="method"):
        train(config, workdir)


def test_save_and_load_delta_eject_prefix_mlp(setup, tmp_path):
    folder, _, _ = setup
    base = up.load_pretrained(folder)
    model = up.build(base.config, "mam(l=3, r=4, hidden=8)", num_labels=2)
    delta = up.init_delta(model, jax.random.key(0), params=base.params)
    delta = jax.tree.map(lambda x: x + 0.05, delta)  # non-trivial adapter output
    batch = {"input_ids": jnp.array([[0, 5, 6, 7, 2, 1]]),
             "attention_mask": jnp.array([[1, 1, 1, 1, 1, 0]])}
    expected = model.apply({"params": base.params, "delta": delta}, **batch).logits

    path = save_delta(str(tmp_path / "mam.safetensors"), model, delta, base)
    loaded_model, loaded = load_delta(path, base)
    assert loaded_model.method.prefix.mlp is False  # stored as plain prefixes
    assert not any("w2" in path for path in traverse_util.flatten_dict(loaded, sep="/"))
    got = loaded_model.apply({"params": base.params, "delta": loaded}, **batch).logits
    np.testing.assert_allclose(got, expected, atol=1e-5)

    method, _ = load_delta(save_delta(str(tmp_path / "m.safetensors"), model.method, delta,
                                      base), base)
    assert isinstance(method, up.Method)

    other = up.Base(config=base.config, params=jax.tree.map(lambda x: x + 1, base.params))
    with pytest.raises(CheckpointMismatch, match="fingerprint"):
        load_delta(path, other)
    with pytest.raises(FileNotFoundError, match="save_delta"):
        load_delta(str(tmp_path / "missing.safetensors"), base)


# ----------------------------------------------------------------------------- issue 12
def _cli_error(capsys, argv):
    from unified_petl import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_resume_refuses_a_changed_run_and_keeps_its_files(setup, tmp_path, capsys):
    """A setting that changes what the run computes is refused (one line listing the keys),
    before config.json, results.json or delta.safetensors is touched; settings that only
    change reporting are allowed."""
    from unified_petl import cli

    folder, train_file, eval_file = setup
    config_file = tiny_runs.write_config_file(str(tmp_path / "tiny.py"), folder, train_file,
                                              eval_file, steps=4)
    workdir = str(tmp_path / "run")
    argv = ["train", "--config", config_file, "--workdir", workdir]
    cli.main(argv)
    files = {name: _read(os.path.join(workdir, name))
             for name in ("config.json", "results.json", "delta.safetensors")}

    err = _cli_error(capsys, argv + ["--config.optim.lr=0.001", "--config.batch_size=4"])
    assert "batch_size 8 -> 4" in err and "optim.lr 0.01 -> 0.001" in err and workdir in err
    err = _cli_error(capsys, argv + ["--config.total_steps=2"])  # would report step 2 as 4
    assert "total_steps 4 -> 2" in err
    err = _cli_error(capsys, argv + [f"--config.data.train_files={eval_file}"])
    assert "data.train_files" in err
    err = _cli_error(capsys, argv + ["--config.seed=1"])
    assert "seed 0 -> 1" in err
    for name, content in files.items():  # untouched by the refused runs
        assert _read(os.path.join(workdir, name)) == content, name

    capsys.readouterr()
    cli.main(argv + ["--config.log_every=2", "--config.eval_every=2", "--config.progress=false",
                     f"--config.data.train_files={os.path.relpath(train_file)}"])  # same file
    assert json.loads(capsys.readouterr().out) == json.loads(files["results.json"])["eval"]
    assert json.load(open(os.path.join(workdir, "config.json")))["log_every"] == 2


def test_restart_before_the_first_checkpoint_does_not_duplicate_metrics(setup, tmp_path):
    folder, train_file, eval_file = setup
    config = tiny_runs.tiny_config(folder, train_file, eval_file, total_steps=5,
                                   checkpoint_every=4)

    def crash_after_2(step, state):
        if step == 2:
            raise Crash()

    workdir = str(tmp_path / "run")
    with pytest.raises(Crash):
        train(config, workdir, hooks=[crash_after_2])
    assert sorted(_losses(workdir)) == [1, 2]
    train(config, workdir)  # no checkpoint: starts again at step 1
    steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]


def test_damaged_delta_file_is_one_line(setup, tmp_path):
    from unified_petl.train.checkpoint import CheckpointCorrupt

    folder, _, _ = setup
    base = up.load_pretrained(folder)
    model = up.build(base.config, "lora(r=2)", num_labels=2)
    delta = up.init_delta(model, jax.random.key(0), params=base.params)
    path = save_delta(str(tmp_path / "best" / "delta.safetensors"), model, delta, base, step=3)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointCorrupt, match="damaged or incomplete") as e:
        load_delta(path, base)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_method_mismatch_names_what_differs():
    """A preset whose defaults changed resolves to another Δh: the refusal says which setting
    differs instead of 'method X, not X'."""
    from unified_petl.train.checkpoint import check_method, method_differences

    old = up.parse_method("pa(r=4, dropout=0)")
    new = up.parse_method("pa(r=4, dropout=0.1)")
    assert method_differences(old.to_dict(), old) == []
    assert method_differences(old.to_dict(), new) == ["term 1 (adapter) dropout: 0.0 -> 0.1"]
    with pytest.raises(CheckpointMismatch, match=r"\(term 1 \(adapter\) dropout: 0.0 -> 0.1\); "
                                                 r"use a new workdir"):
        check_method(old.to_dict(), new, "W", "use a new workdir")
