"""End to end on the paper's four tasks, offline: local files in each dataset's schema, a tiny
model of the paper's architecture with a real tokenizer, a few training steps of the trainer,
then generation / classification and the task's metric (unified_petl.predict)."""
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_runs import save_tokenizer, tiny_config  # noqa: E402

from unified_petl.predict import (decoder_start_token_id, generate_kwargs,  # noqa: E402
                                  predict_and_score)

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
KIND = {"xsum": "bart", "wmt16_en_ro": "mbart", "mnli": "roberta", "sst2": "roberta"}
METRIC_KEYS = {"xsum": {"rouge1", "rouge2", "rougeLsum"}, "wmt16_en_ro": {"bleu"},
               "mnli": {"accuracy"}, "sst2": {"accuracy"}}
N_TRAIN, N_EVAL = 16, 6


def save_mbart_tokenizer(folder: str) -> int:
    """A real MBartTokenizer (unigram, the 25 cc25 language codes) over a 99-token vocab
    (the tiny model's); returns how many words `w0 ...` it knows."""
    from transformers import MBartTokenizer
    from transformers.models.mbart.tokenization_mbart import FAIRSEQ_LANGUAGE_CODES

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(code, 0.0) for code in FAIRSEQ_LANGUAGE_CODES] + [("<mask>", 0.0)]
    words = 99 - len(vocab)
    vocab += [(f"▁w{i}", -1.0) for i in range(words)]
    MBartTokenizer(vocab=vocab, src_lang="en_XX", tgt_lang="ro_RO").save_pretrained(folder)
    return words


def write_task_files(folder: str, task: str, words: int, seed: int = 0):
    """(train, eval) .jsonl files with the columns of the task's hub dataset."""
    rng = np.random.default_rng(seed)
    paths = []
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        rows = []
        for i in range(n):
            text = " ".join(f"w{int(w)}" for w in rng.integers(5, words, size=rng.integers(3, 7)))
            other = " ".join(f"w{int(w)}" for w in rng.integers(5, words, size=3))
            if task == "xsum":
                rows.append({"document": text, "summary": " ".join(text.split()[:2])})
            elif task == "wmt16_en_ro":
                rows.append({"translation": {"en": text, "ro": " ".join(text.split()[::-1])}})
            elif task == "mnli":  # label names, as some local copies write them
                label = ("entailment", "neutral", "contradiction")[i % 3]
                rows.append({"premise": text, "hypothesis": other, "label": label})
            else:
                rows.append({"sentence": text, "label": i % 2})
        path = os.path.join(folder, f"{task}_{split}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        paths.append(path)
    return paths


@pytest.mark.parametrize("task", ["xsum", "wmt16_en_ro", "mnli", "sst2"])
def test_train_generate_score(task, tiny_checkpoint, tmp_path):
    import unified_petl as up
    from unified_petl.data import encode, get_task, load_task
    from unified_petl.train.checkpoint import load_delta
    from unified_petl.train.loop import train
    from unified_petl.train.setup import frozen_params

    kind = KIND[task]
    folder = str(tmp_path / "base")
    shutil.copytree(tiny_checkpoint(kind, layers=1), folder)  # 1 layer: compiles faster
    if kind == "mbart":
        words = save_mbart_tokenizer(folder)
    else:
        save_tokenizer(folder)  # word-level w0..w94 with <s>=0, <pad>=1, </s>=2
        words = 95
    train_file, eval_file = write_task_files(str(tmp_path), task, words)

    seq2seq = kind != "roberta"
    config = tiny_config(folder, train_file, eval_file, task=task, total_steps=4,
                         checkpoint_every=0, batch_size=8,
                         method="mam(l=2, r=4, s=4)" if seq2seq else "mam(l=2, r=4, s=2)")
    config.optim.warmup_steps = 0
    config.data.buckets = (16,)  # one source shape: one compile of each step
    if task == "wmt16_en_ro":  # the paper's translation batching: a token budget per step
        config.max_tokens = 128
        config.base_overrides = {"attention_dropout": 0.0}
    results = train(config, str(tmp_path / "run"))
    assert results["step"] == 4 and math.isfinite(results["eval"]["loss"])

    base = up.load_pretrained(folder)
    model, delta = load_delta(str(tmp_path / "run" / "delta.safetensors"), base)
    variables = {"params": frozen_params(base, model), "delta": delta}
    spec = get_task(task)
    encoded = encode(spec, load_task(task, "validation", data_files=eval_file),
                     base.tokenizer, max_source_len=16, max_target_len=8)
    settings = dict(num_beams=2, max_length=6, min_length=2, no_repeat_ngram_size=2,
                    length_penalty=1.0, early_stopping=True)
    metrics, preds = predict_and_score(model, variables, spec, encoded, base.tokenizer, base,
                                       settings, batch_size=4)

    assert len(preds) == N_EVAL
    assert METRIC_KEYS[task] <= set(metrics)
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for k, v in metrics.items()
               if k in METRIC_KEYS[task])
    if seq2seq:
        assert all(isinstance(p, str) for p in preds)
        assert any(p for p in preds), "every generation is empty"
        vocab_words = {f"w{i}" for i in range(words)}
        assert all(set(p.split()) <= vocab_words for p in preds), preds  # specials skipped
    else:
        assert set(preds) <= set(range(spec.num_labels))
        # the trainer's eval step and predict agree on the same Δh (prefixes ejected here)
        assert abs(metrics["accuracy"] - results["eval"]["accuracy"]) <= 100.0 / N_EVAL
    if kind == "mbart":  # source `X </s> en_XX`, decoder starts with ro_RO
        tok = base.tokenizer
        assert encoded.source[0][-1] == tok.convert_tokens_to_ids("en_XX")
        assert decoder_start_token_id(spec, tok) == tok.convert_tokens_to_ids("ro_RO")


def test_paper_decoding_settings_are_generate_keywords():
    from unified_petl.train.config import load_config

    for path in ("xsum/mam.py", "wmt_en_ro/mam.py"):
        settings = load_config(os.path.join(CONFIGS, path)).generate
        kwargs = generate_kwargs(settings)
        assert kwargs == {k: settings[k] for k in kwargs}
    with pytest.raises(ValueError, match="num_beam"):
        generate_kwargs({"num_beam": 4})
