"""The trainer's paper-run settings: model selection with the best Δh kept (eval.selection,
eval.generate), token-budget batches (max_tokens), base_overrides, and head=false."""
import json
import math
import os

import numpy as np
import pytest

import tiny_runs
from unified_petl.data import get_task
from unified_petl.train import selection


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tiny_runs.enable_compile_cache(tmp_path_factory)
    data = str(tmp_path_factory.mktemp("data"))
    return {"roberta": tiny_runs.model_folder(tmp_path_factory, "roberta"),
            "bart": tiny_runs.model_folder(tmp_path_factory, "bart"),
            "sst2": tiny_runs.write_data(data, "sst2"),
            "xsum": tiny_runs.write_data(data, "xsum", n_train=32, n_eval=8)}


def _evals(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "eval_loss" in r]


# ----------------------------------------------------------------------------- selection
def test_selection_metric_is_checked_against_what_the_run_computes():
    xsum, enro, sst2 = get_task("xsum"), get_task("wmt16_en_ro"), get_task("sst2")
    assert selection.resolve(xsum, "", generate=True) == "rouge2"  # the task's own
    assert selection.resolve(xsum, "", generate=False) == "loss"  # ROUGE is not computed
    assert selection.resolve(enro, "bleu", generate=True) == "bleu"
    assert selection.resolve(sst2, "", generate=False) == "accuracy"
    with pytest.raises(ValueError, match="eval.generate=true"):
        selection.resolve(xsum, "rouge2", generate=False)
    with pytest.raises(ValueError, match="use one of loss, loss_smoothed, accuracy"):
        selection.resolve(sst2, "rouge2", generate=False)


def test_selection_keeps_the_best_and_resumes(tmp_path):
    saved = []
    best = selection.Selection(str(tmp_path), "loss", saved.append)
    for step, loss in ((2, 3.0), (4, 2.0), (6, float("nan")), (8, 2.5)):
        best.update(step, {"loss": loss})
    assert best.best == {"step": 4, "metric": "loss", "value": 2.0}
    assert len(saved) == 2  # steps 2 and 4 were each the best when evaluated
    with open(tmp_path / "best" / "best.json") as f:
        assert json.load(f)["step"] == 4

    resumed = selection.Selection(str(tmp_path), "loss", None, resume_step=6)
    assert resumed.best["step"] == 4 and not resumed.update(8, {"loss": 2.5})
    # a record from after the resumed step belongs to steps that will be replayed
    assert selection.Selection(str(tmp_path), "loss", None, resume_step=3).best is None
    rouge = selection.Selection(str(tmp_path / "r"), "rouge2", None)
    assert rouge.update(1, {"rouge2": 1.0}) and rouge.update(2, {"rouge2": 3.0})
    assert not rouge.update(3, {"rouge2": 2.0})


def test_best_delta_is_the_selected_evaluation(setup, tmp_path):
    """XSum-style selection: decode at every evaluation, keep the best ROUGE-2's Δh, and
    `evaluate(best=True)` on that Δh reproduces the selected evaluation."""
    from unified_petl.train.loop import evaluate, train

    train_file, eval_file = setup["xsum"]
    config = tiny_runs.tiny_config(setup["bart"], train_file, eval_file, task="xsum",
                                   total_steps=6, eval_every=2, checkpoint_every=0,
                                   method="mam(l=2, r=4, s=4)")
    config.data.buckets = (16,)
    config.eval.generate = True
    config.eval.selection = "rouge2"
    config.generate.num_beams = 2
    config.generate.max_length = 6
    workdir = str(tmp_path / "run")
    results = train(config, workdir)

    evals = _evals(workdir)
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all({"eval_rouge1", "eval_rouge2", "eval_rougeLsum"} <= set(r) for r in evals)
    scores = [r["eval_rouge2"] for r in evals]
    chosen = evals[int(np.argmax(scores))]  # the first of equal maxima
    assert results["best"] == {"step": chosen["step"], "metric": "rouge2",
                               "value": chosen["eval_rouge2"]}

    again = evaluate(config, workdir, best=True)
    assert again["step"] == chosen["step"] and again["selected"]
    assert again["eval"]["rouge2"] == pytest.approx(chosen["eval_rouge2"], abs=1e-9)
    assert again["eval"]["loss"] == pytest.approx(chosen["eval_loss"], rel=1e-5)


# ----------------------------------------------------------------------------- max_tokens
def test_max_tokens_batches_by_token_budget(setup, tmp_path):
    from unified_petl.train.loop import _train_stream, train
    from unified_petl.train.setup import build_run, encode_split
    from unified_petl.train.step import make_mesh

    train_file, eval_file = setup["xsum"]
    config = tiny_runs.tiny_config(setup["bart"], train_file, eval_file, task="xsum",
                                   total_steps=4, checkpoint_every=0, grad_accum=2,
                                   max_tokens=64)
    config.data.buckets = (8, 16)
    run = build_run(config)
    stream = _train_stream(encode_split(run, config, "train"), run, config, make_mesh(1),
                           {"epoch": 0, "position": 0})
    rows = []
    for _ in range(stream.steps_per_epoch):
        batch = next(stream)
        b, s = batch["input_ids"].shape
        t = batch["labels"].shape[1]
        assert b * max(s, t) <= 64 and b % 2 == 0  # microbatches of grad_accum split evenly
        rows.append(b)
    assert set(rows) == {4, 8}  # 64 // 16 and 64 // 8: the rows follow the length bucket

    results = train(config, str(tmp_path / "run"))
    assert results["step"] == 4 and math.isfinite(results["eval"]["loss"])


# ----------------------------------------------------------------------------- base_overrides
def test_base_overrides_change_the_model_not_the_base(setup):
    from unified_petl.models.loading import load_pretrained
    from unified_petl.train.setup import build_run

    train_file, eval_file = setup["xsum"]
    base = load_pretrained(setup["bart"])
    config = tiny_runs.tiny_config(setup["bart"], train_file, eval_file, task="xsum")
    config.base_overrides = {"attention_dropout": 0.0, "dropout": 0.3}
    run = build_run(config, base)
    assert (run.model.cfg.attention_dropout, run.model.cfg.dropout) == (0.0, 0.3)
    assert base.config.dropout != 0.3  # the shared base is left alone
    config.base_overrides = {"attention_dropuot": 0.0}
    with pytest.raises(ValueError, match="base_overrides.attention_dropuot"):
        build_run(config, base)


# ----------------------------------------------------------------------------- head=false
def test_frozen_head_stays_at_its_init(setup, tmp_path):
    """head=false (the reference code's GLUE runs): the new head keeps its random init, is
    stored with the Δh, and is not counted as trained."""
    import jax
    import transformers

    import unified_petl as up
    from unified_petl.delta.budget import count
    from unified_petl.train.loop import train
    from unified_petl.train.setup import build_run

    train_file, eval_file = setup["sst2"]
    results = {}
    for head in (True, False):
        config = tiny_runs.tiny_config(setup["roberta"], train_file, eval_file, total_steps=3,
                                       checkpoint_every=0,
                                       method=f"lora(r=4, head={str(head).lower()})")
        results[head] = train(config, str(tmp_path / f"head_{head}"))
    hf_config = transformers.AutoConfig.from_pretrained(setup["roberta"])
    frozen_count = count(hf_config, "lora(r=4, head=false)", num_labels=2)
    assert frozen_count["head"] == 0
    assert results[False]["trained_params"] == frozen_count["trained"]
    assert results[True]["trained_params"] - results[False]["trained_params"] == count(
        hf_config, "lora(r=4)", num_labels=2)["head"] > 0

    run = build_run(config)
    init = up.init_delta(run.model, jax.random.key(config.seed), params=run.params)
    _, trained = up.load_delta(str(tmp_path / "head_False" / "delta.safetensors"), run.base)
    heads = [k for k in init if k.startswith("classifier")]
    assert heads
    for leaf_init, leaf in zip(jax.tree.leaves({k: init[k] for k in heads}),
                               jax.tree.leaves({k: trained[k] for k in heads})):
        np.testing.assert_array_equal(np.asarray(leaf_init), np.asarray(leaf))
    changed = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves({k: v for k, v in init.items() if k not in heads}),
        jax.tree.leaves({k: v for k, v in trained.items() if k not in heads}))]
    assert any(changed)  # the LoRA Δh did train
