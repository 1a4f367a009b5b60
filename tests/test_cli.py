"""The command line: one-line errors with exit code 2, SIGTERM / Ctrl-C save and exit (75 /
130), eval, count."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unified_petl import cli
from unified_petl.train import Checkpointer, train
from unified_petl.train.config import ConfigError, base_config, override
from unified_petl.train.writer import read_metrics

import tiny_runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    config = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                         eval_file, steps=100000)
    return {"folder": folder, "train": train_file, "eval": eval_file, "config": config,
            "cache": cache, "data": data}


def _error_line(capsys, argv):
    """Run the CLI in-process; return its stderr, asserting exit code 2 and ONE line."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unified-petl: error: "), err
    return err


@pytest.mark.parametrize("override_arg,expected", [
    ("--config.nope=1", "unknown config key --config.nope"),
    ("--config.optim.nope=1", "config.optim has no key 'nope'"),
    ("--config.optim.lr=fast", "bad value 'fast' for --config.optim.lr: expected a number"),
    ("--config.batch_size=1.5", "expected an integer"),
    ("--config.progress=maybe", "expected true or false"),
    ("--config.optim=1", "is a group"),
    ("--config.batch_size=0", "batch_size=0 must be >= 1"),
    ("--config.method=lora(r=", "cannot parse method"),
])
def test_bad_override_is_one_line(setup, capsys, tmp_path, override_arg, expected):
    err = _error_line(capsys, ["train", "--config", setup["config"], "--workdir",
                               str(tmp_path), override_arg])
    assert expected in err


def test_bad_data_or_config_file_is_one_line(setup, capsys, tmp_path):
    bad = os.path.join(setup["data"], "broken.json")
    with open(bad, "w") as f:
        f.write('{"sentence": "w5 w6", "label": 1}\n{"sentence": oops}\n')
    err = _error_line(capsys, ["train", "--config", setup["config"], "--workdir",
                               str(tmp_path), f"--config.data.train_files={bad}"])
    assert "broken.json" in err
    err = _error_line(capsys, ["train", "--config", setup["config"], "--workdir",
                               str(tmp_path), "--config.data.train_files=/nowhere/x.json"])
    assert "/nowhere/x.json" in err and "not found" in err
    assert "not found" in _error_line(capsys, ["train", "--config", "nope.py", "--workdir", "w"])
    assert "--workdir" in _error_line(capsys, ["train", "--config", setup["config"]])


def test_override_parses_to_the_existing_type():
    c = override(base_config(), ["optim.lr=3e-4", "progress=false", "data.buckets=(8,16)",
                                 "method=mam(l=16, r=16)", "total_steps=12"])
    assert c.optim.lr == 3e-4 and c.progress is False and tuple(c.data.buckets) == (8, 16)
    assert c.method == "mam(l=16, r=16)" and c.total_steps == 12
    # base_overrides is free-form: new keys are taken, values parsed as Python literals
    c = override(base_config(), ["base_overrides.attention_dropout=0.0"])
    assert c.base_overrides.attention_dropout == 0.0
    with pytest.raises(ConfigError, match="unknown config key"):
        override(base_config(), ["optim.lr_typo=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        override(base_config(), ["optim.lr"])


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, cli.EXIT_PREEMPTED),
                                         (signal.SIGINT, cli.EXIT_INTERRUPTED)])
def test_signal_saves_and_exits_cleanly_then_resumes(setup, tmp_path, signum, code):
    """SIGTERM (preemption) exits 75, not 0: a scheduler requeues, `afterok` does not fire.
    Ctrl-C (SIGINT) saves the same way and exits 130."""
    name = signal.Signals(signum).name
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=setup["cache"],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "unified_petl.cli", "train", "--config",
                             setup["config"], "--workdir", workdir,
                             "--config.checkpoint_every=1000"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while len(read_metrics(workdir)) < 3:  # training is under way
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.5)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert f"{name}: saved checkpoint" in err and "Traceback" not in err
    assert json.loads(out)["preempted"] is True
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    saved = ckpt.latest_step()
    ckpt.close()
    assert saved is not None and saved < 1000  # saved at the signal, not on schedule
    assert max(r["step"] for r in read_metrics(workdir)) == saved

    # the checkpoint resumes: the next run starts at saved + 1
    from unified_petl.train.config import load_config

    seen = []

    def stop(step, state):
        seen.append(step)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(override(load_config(setup["config"]), ["checkpoint_every=1000"]), workdir,
              hooks=[stop])
    assert seen == [saved + 1]

    # eval of the workdir's latest checkpoint
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--config", setup["config"], "--workdir", workdir, "--config.x=1"])
    assert e.value.code == 2
    cli.main(["eval", "--config", setup["config"], "--workdir", workdir])
    results = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert results["step"] == saved and 0 <= results["eval"]["accuracy"] <= 100


def test_a_second_ctrl_c_stops_at_once():
    """The first Ctrl-C asks for a checkpoint at the end of the step; the second raises
    KeyboardInterrupt right away; the previous handlers come back afterwards."""
    from unified_petl.train.writer import Preemption

    before = signal.getsignal(signal.SIGINT)
    stop = Preemption()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested(1) and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_outside_the_loop_is_one_line(setup, capsys, tmp_path, monkeypatch):
    from unified_petl.train import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--config", setup["config"], "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == cli.EXIT_INTERRUPTED and err.count("\n") == 1
    assert err.startswith("unified-petl: error: interrupted")


def test_slurm_script_requeues_on_the_preempted_code():
    script = open(os.path.join(os.path.dirname(__file__), "..", "launch",
                               "slurm.sbatch")).read()
    assert f"EXIT_PREEMPTED={cli.EXIT_PREEMPTED}" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and 'exit "$status"' in script


def test_count(setup, capsys):
    cli.main(["count", "--base", setup["folder"], "--method", "lora(r=4)", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["trained"] > 0 and result["method"] == "lora(r=4)"
    cli.main(["count", "--base", setup["folder"], "--method", "mam(l=2, r=4)"])
    out = capsys.readouterr().out
    assert "prefix@heads" in out and "adapter@ffn" in out
    assert "unknown method" in _error_line(capsys, ["count", "--base", setup["folder"],
                                                    "--method", "nope(r=1)"])


def test_metric_writer_truncates_on_resume_and_mirrors_to_tensorboard(tmp_path, monkeypatch):
    """TensorBoard is optional: with a (fake) tensorboard importable, scalars are mirrored."""
    import types

    from unified_petl.train.writer import MetricWriter

    events = []

    class FakeWriter:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_event(self, event):
            events.append(event)

        def flush(self):
            pass

        def close(self):
            pass

    class Summary:
        class Value:
            def __init__(self, tag, simple_value):
                self.tag, self.simple_value = tag, simple_value

        def __init__(self, value):
            self.value = value

    class Event:
        def __init__(self, wall_time, step, summary):
            self.step, self.summary = step, summary

    fake = {"tensorboard": types.ModuleType("tensorboard"),
            "tensorboard.summary": types.ModuleType("tensorboard.summary"),
            "tensorboard.summary.writer": types.ModuleType("tensorboard.summary.writer"),
            "tensorboard.summary.writer.event_file_writer": types.ModuleType("efw"),
            "tensorboard.compat": types.ModuleType("tensorboard.compat"),
            "tensorboard.compat.proto": types.ModuleType("tensorboard.compat.proto"),
            "tensorboard.compat.proto.event_pb2": types.ModuleType("event_pb2"),
            "tensorboard.compat.proto.summary_pb2": types.ModuleType("summary_pb2")}
    fake["tensorboard.summary.writer.event_file_writer"].EventFileWriter = FakeWriter
    fake["tensorboard.compat.proto.event_pb2"].Event = Event
    fake["tensorboard.compat.proto.summary_pb2"].Summary = Summary
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)

    writer = MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": 1.0 / step, "lr": 0.1})
    writer.write({"step": 3, "eval_accuracy": 50.0, "eval_loss": float("nan")})
    writer.truncate_after(2)
    writer.close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    assert [e.step for e in events] == [1, 2, 3, 3]
    assert {v.tag for v in events[-1].summary.value} == {"eval_accuracy"}  # NaN skipped
