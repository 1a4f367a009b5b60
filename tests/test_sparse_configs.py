"""The gradient-masked methods' configs (configs/glue/{fish, child_tuning_*, diff_pruning}.py,
configs/demo/fish.py): they load, pass the trainer's checks, carry their papers' settings and
the exact command, and their methods build on a tiny model once their mask is resolved."""
import os

import pytest

import unified_petl as up
from unified_petl.train.config import check_config, load_config, with_defaults

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROWS = ("fish", "child_tuning_d", "child_tuning_f", "diff_pruning")


def _load(row, task):
    return load_config(os.path.join(ROOT, "configs", "glue", f"{row}.py:{task}"))


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("task", ("mnli", "sst2", "mnli_1600"))
def test_loads_with_the_papers_settings(row, task):
    c = _load(row, task)
    check_config(with_defaults(c))
    method = up.parse_method(c.method)
    with open(os.path.join(ROOT, "configs", "glue", f"{row}.py")) as f:
        assert f"unified-petl train --config configs/glue/{row}.py:{task}" in f.read()
    size = {"mnli": 392_702, "sst2": 67_349}[c.task]
    assert c.data.max_source_len == 128 and c.optim.max_grad_norm == 1.0
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.end_lr) == (0.9, 0.999, 1e-8, 0.0)
    assert c.eval_every == size // c.batch_size and c.eval.selection == "accuracy"
    if row == "fish":  # FISH run_sparse_updates.sh / lib.sh / run_table_1.sh
        assert c.base == "bert-large-cased-whole-word-masking"
        assert (c.optim.lr, c.batch_size, c.total_steps) == (5e-5, 16, 7 * (size // 16))
        term = method.sparse
        assert (term.mask, term.density, term.num_examples, term.select) == (
            "fisher", 0.005, 1024, "global") and term.head_in_budget
        assert (c.optim.weight_decay, c.optim.warmup_ratio, c.seed) == (0.0, 0.0, 0)
    elif row.startswith("child_tuning"):  # AliceMind ChildTuning/run.sh
        assert c.base == "bert-large-cased"
        assert (c.optim.lr, c.batch_size, c.total_steps) == (4e-5, 16, 3 * (size // 16))
        assert (c.optim.weight_decay, c.optim.warmup_ratio, c.seed) == (0.01, 0.1, 42)
        term = method.grad_mask
        assert term.density == 0.3 and term.mask == ("fisher" if row.endswith("d")
                                                      else "bernoulli")
    else:  # DiffPruning experiments/example_sst2.sh
        assert c.base == "bert-large-cased-whole-word-masking"
        term = method.diff
        assert (c.optim.lr, c.batch_size, c.total_steps, term.steps) == (
            1e-5, 8, 6 * (size // 8), 3 * (size // 8))
        assert (term.lr, term.l0, term.gate, term.gate_lr, term.density) == (
            5e-5, 1.25e-7, (-1.5, 1.5, 1.0, 5.0, 1.0), 0.1, 0.005)


def test_demo_fish_config():
    c = load_config(os.path.join(ROOT, "configs", "demo", "fish.py"))
    check_config(with_defaults(c))
    term = up.parse_method(c.method).sparse
    assert (term.mask, term.density, term.num_examples) == ("fisher", 0.005, 1024)
