"""The demo configs: each loads, passes the trainer's checks, and stays within its budget;
and the demo's runner end to end in miniature (3 steps). The measured demo (make demo, about
five minutes of CPU) is not run here; its numbers are in the README.
"""
import json
import os

import pytest

from unified_petl import demo
from unified_petl.train.config import REQUIRED, check_config, load_config, with_defaults

NAMES = demo.available()


def test_demo_has_the_methods_of_the_issue():
    assert {"mam", "lora", "pa", "prefix", "bitfit", "full", "control"} <= set(NAMES)
    assert set(demo.DEFAULT_METHODS) <= set(NAMES)
    assert "demo_common" not in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_demo_config_loads(name):
    path = os.path.join(demo.CONFIG_DIR, f"{name}.py")
    config = load_config(path)
    assert all(key in config for key in REQUIRED)
    check_config(with_defaults(config))
    assert config.task == "demo" and os.path.isdir(config.base)
    assert config.random_init == (name == "control")
    with open(path) as f:
        assert f"unified-petl train --config configs/demo/{name}.py" in f.read()


@pytest.mark.parametrize("name", ["mam", "lora"])
def test_petl_budget_is_under_two_percent(name):
    import transformers

    from unified_petl.delta.budget import count

    config = load_config(os.path.join(demo.CONFIG_DIR, f"{name}.py"))
    result = count(transformers.AutoConfig.from_pretrained(config.base), config.method,
                   num_labels=2)
    assert 0 < result["percent_trained"] <= 2.0, result["percent_trained"]


def test_table_format():
    rows = [{"name": "mam", "method": "mam(l=16, r=16, s=2, mlp=False)", "percent": 0.66,
             "accuracy": 92.3, "seconds": 61.0}]
    table = demo.format_table(rows)
    assert "held-out acc" in table and "92.3%" in table and "0.66%" in table


def test_workers_share_the_methods_and_keep_control_with_mam():
    assert demo.groups(["mam", "control", "lora", "full"], 2) == [["mam", "control"],
                                                                  ["lora", "full"]]
    parts = demo.groups(["lora", "full", "pa"], 2)
    assert sorted(sum(parts, [])) == ["full", "lora", "pa"] and len(parts) == 2
    assert demo.groups(["mam"], 4) == [["mam"]]
    # full fine-tuning costs more than one method: its worker gets fewer of the others
    parts = demo.groups(["full", "lora", "pa", "bitfit", "prefix"], 2)
    assert sorted(sum(parts, [])) == ["bitfit", "full", "lora", "pa", "prefix"]
    assert len(next(p for p in parts if "full" in p)) == 2


def test_time_breakdown_rows_add_up():
    row = {"name": "lora", "load": 3.0, "tokenise": 1.0, "compile": 20.0, "train": 60.0,
           "evaluate": 4.0, "other": 2.0, "seconds": 87.0}
    lines = demo.format_times([row]).splitlines()
    assert lines[0].split() == ["seconds", *demo.PHASES, "total"]
    assert lines[1].split() == ["lora", "3.0", "1.0", "20.0", "60.0", "4.0", "2.0", "90.0"]


def test_demo_runs_end_to_end_in_two_workers(tmp_path, capsys):
    """`make demo` in miniature: LoRA and the control for 3 steps each, in two worker
    processes on the real MiniLM; the table has both rows in order with sane values."""
    demo.main(["--methods", "lora,control", "--steps", "3", "--jobs", "2",
               "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    table, times = out.split("where the time went")
    lines = [line for line in table.splitlines() if line.startswith(("lora", "control"))]
    assert [line.split()[0] for line in lines] == ["lora", "control"]
    # where the time went: every phase measured, compiles seen, the parts add up to the row
    for line in [line for line in times.splitlines() if line.startswith(("lora", "control"))]:
        load, tokenise, compile_s, train, evaluate, other, total = map(float, line.split()[1:])
        assert compile_s > 0 and tokenise > 0 and train > 0 and evaluate > 0 and load > 0
        # seven numbers printed to 0.1 s: their rounding alone can differ by 7 x 0.05
        assert abs(load + tokenise + compile_s + train + evaluate + other - total) < 0.36
    for name, line in zip(("lora", "control"), lines):
        with open(tmp_path / name / "results.json") as f:
            results = json.load(f)
        # one unit everywhere: the table's accuracy is results.json's, a percentage
        assert f"{results['eval']['accuracy']:.1f}%" in line
        assert results["step"] == 3 and 0.0 <= results["eval"]["accuracy"] <= 100.0
        assert results["random_init"] == (name == "control")
        assert 0 < results["percent_trained"] <= 2.0
