"""Seed sweeps and the report: mean ± std per run group equal numpy's on made-up runs; the
sweep trains each seed in ROOT/seed<N> and skips finished ones; the SLURM array script."""
import json
import os
import subprocess

import numpy as np
import pytest

from unified_petl import cli, report
from unified_petl.sweep import parse_seeds
from unified_petl.train.config import base_config, override

import tiny_runs

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _fake_run(folder, *, method, seed, accuracy, loss, test_bleu=None, **config_keys):
    """A run folder as the trainer leaves it: config.json, results.json (+ an eval file)."""
    os.makedirs(folder)
    c = base_config()
    c.task, c.base, c.method, c.seed = "sst2", "roberta-base", method, seed
    override(c, [f"{key}={value}" for key, value in config_keys.items()])
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(c.to_json(indent=2))
    results = {"step": 10, "method": method, "eval": {"loss": loss, "accuracy": accuracy + 1},
               "best": {"step": 5, "metric": "accuracy", "value": accuracy}}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)
    if test_bleu is not None:
        with open(os.path.join(folder, "eval_best_results_test.json"), "w") as f:
            json.dump({"step": 5, "split": "test",
                       "eval": {"bleu": test_bleu, "sys_len": 9.0, "bleu_tokenize": "moses"}}, f)


@pytest.fixture
def runs(tmp_path):
    """Two methods x five seeds with random scores, one unfinished run, and a run of another
    learning rate (its own group)."""
    rng = np.random.default_rng(0)
    made = {}
    for method in ("mam(l=16, r=16, s=2)", "lora(r=16)"):
        root = tmp_path / method.split("(")[0]
        values = {"best/accuracy": [], "final/loss": [], "best_test/bleu": []}
        for seed in (42, 2, 4, 6, 8):
            acc, loss, bleu = rng.uniform(80, 95), rng.uniform(0.2, 0.6), rng.uniform(20, 40)
            _fake_run(str(root / f"seed{seed}"), method=method, seed=seed, accuracy=acc,
                      loss=loss, test_bleu=bleu, progress=bool(seed % 4))
            for column, value in zip(values, (acc, loss, bleu)):
                values[column].append(value)
        os.makedirs(root / "seed9")  # started, not finished
        with open(root / "seed9" / "config.json", "w") as f:
            f.write("{}")
        made[method] = values
    _fake_run(str(tmp_path / "lr" / "seed42"), method="lora(r=16)", seed=42, accuracy=50.0,
              loss=1.0, **{"optim.lr": 1e-3})
    return tmp_path, made


def test_report_mean_and_std_equal_numpys(runs):
    tmp_path, made = runs
    table, notes = report.report([str(tmp_path)])
    assert table["ddof"] == 1
    groups = {g["label"]: g for g in table["groups"]}
    assert len(groups) == 3  # mam, lora, lora with another lr; `progress` does not split
    for method, values in made.items():
        (group,) = [g for g in table["groups"] if method in g["label"]
                    and g["differs"] == {"optim.lr": 1e-4}]  # the default lr
        assert sorted(group["seeds"]) == [2, 4, 6, 8, 42]
        for column, xs in values.items():
            got = group["metrics"][column]
            assert got["mean"] == pytest.approx(np.mean(xs), abs=1e-12)
            assert got["std"] == pytest.approx(np.std(xs, ddof=1), abs=1e-12)
            assert got["n"] == 5
    single = [g for g in table["groups"] if "optim.lr=0.001" in g["label"]][0]
    assert single["metrics"]["best/accuracy"] == {"mean": 50.0, "std": None, "n": 1,
                                                  "values": [50.0]}
    # hidden by default: BLEU's details, non-numbers
    assert "best_test/sys_len" not in table["columns"]
    assert "best_test/bleu_tokenize" not in table["columns"]
    assert sum("unfinished" in n for n in notes) == 2


def test_report_markdown_and_json_through_the_cli(runs, capsys):
    tmp_path, made = runs
    cli.main(["report", str(tmp_path / "mam"), str(tmp_path / "lora"), "--metrics",
              "best/*,best_test/bleu"])
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0] == "| group | runs | seeds | best/accuracy | best_test/bleu |"
    mam = made["mam(l=16, r=16, s=2)"]["best/accuracy"]
    row = [line for line in lines if line.startswith("| sst2 mam(")][0]
    assert f"{np.mean(mam):.2f} ± {np.std(mam, ddof=1):.2f}" in row and "| 5 |" in row
    assert "ddof=1" in out.out and "unfinished" in out.err
    cli.main(["report", str(tmp_path / "mam"), "--json"])
    table = json.loads(capsys.readouterr().out)
    assert table["groups"][0]["metrics"]["final/loss"]["n"] == 5


def test_report_errors_are_one_line(tmp_path, capsys):
    for argv, expected in ((["report", str(tmp_path)], "no finished run"),
                           (["report", str(tmp_path / "nope")], "is not a folder"),
                           (["report", str(tmp_path), "--config.seed=1"], "not report")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and expected in err, err


def test_parse_seeds():
    assert parse_seeds("42, 2,4,6,8") == (42, 2, 4, 6, 8)
    for bad in ("", "4,x", "1,1", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_sweep_trains_each_seed_then_skips_finished_ones(tmp_path_factory, capsys):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2")
    config = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                         eval_file, steps=2)
    root = str(tmp_path_factory.mktemp("sweep"))
    argv = ["sweep", "--config", config, "--seeds", "3,1", "--workdir-root", root]
    cli.main(argv)
    out = capsys.readouterr()
    for seed in (3, 1):
        saved = json.load(open(os.path.join(root, f"seed{seed}", "config.json")))
        assert saved["seed"] == seed
        assert "training in" in out.err
    row = [line for line in out.out.splitlines() if line.startswith("| sst2 lora(r=4)")][0]
    assert "| 2 | 3,1 |" in row
    accuracies = [json.load(open(os.path.join(root, f"seed{s}", "results.json")))["best"][
        "value"] for s in (3, 1)]
    assert f"{np.mean(accuracies):.2f} ± {np.std(accuracies, ddof=1):.2f}" in row
    # again: the finished seeds are skipped, not retrained (a new seed would train)
    stamps = {s: os.path.getmtime(os.path.join(root, f"seed{s}", "results.json")) for s in (3, 1)}
    cli.main(argv)
    err = capsys.readouterr().err
    assert err.count("skipped") == 2 and "training in" not in err
    assert all(os.path.getmtime(os.path.join(root, f"seed{s}", "results.json")) == t
               for s, t in stamps.items())
    with pytest.raises(SystemExit):
        cli.main(argv + ["--config.seed=4"])
    assert "use --seeds" in capsys.readouterr().err


def test_slurm_array_script_runs_one_seed_per_task(tmp_path):
    """launch/sweep.sbatch with a fake srun and command: task i trains SEEDS[i]."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (fake / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", UNIFIED_PETL="echo",
               SLURM_ARRAY_TASK_ID="1")
    script = os.path.join(ROOT, "launch", "sweep.sbatch")
    root = str(tmp_path / "runs")
    done = subprocess.run(["bash", script, "configs/glue/mam.py:sst2", root,
                           "--config.optim.lr=2e-4"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["train", "--config", "configs/glue/mam.py:sst2", "--workdir",
                                   f"{root}/seed2", "--config.seed=2", "--config.optim.lr=2e-4"]
    env.update(SEEDS="7 9", SLURM_ARRAY_TASK_ID="2")
    done = subprocess.run(["bash", script, "c.py", root], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "array task 2 has no seed" in done.stderr
