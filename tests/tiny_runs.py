"""Tiny training runs for the trainer tests: a tiny model folder WITH a tokenizer, a small
learnable task as local json files, and a config that trains in a few seconds on a CPU.

Not a test module: imported by test_train / test_checkpoint / test_cli (pytest puts tests/
on sys.path).
"""
from __future__ import annotations

import json
import os

import numpy as np

WORDS = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(95)]  # 99 = TINY vocab


def save_tokenizer(folder: str) -> None:
    """A word-level tokenizer over WORDS with RoBERTa/BART specials (<s>=0, <pad>=1, </s>=2)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>").save_pretrained(folder)


def model_folder(tmp_path_factory, kind: str) -> str:
    """A ONE-layer tiny model of `kind` (roberta | bart) with a tokenizer, saved in a new
    folder. One layer instead of conftest's two halves the XLA compile time of every step."""
    import torch
    import transformers as tf

    from conftest import TINY, TINY_ENCODER

    torch.manual_seed(0)
    if kind == "bart":
        config = tf.BartConfig(**{**TINY, "encoder_layers": 1, "decoder_layers": 1})
        model = tf.BartForConditionalGeneration(config)
    else:
        config = tf.RobertaConfig(**{**TINY_ENCODER, "num_hidden_layers": 1}, pad_token_id=1)
        config.max_position_embeddings = 66
        model = tf.RobertaModel(config)
    folder = str(tmp_path_factory.mktemp(f"{kind}_1layer"))
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def enable_compile_cache(tmp_path_factory) -> str:
    """Persist XLA executables for this test process (and the CLI subprocesses given
    JAX_COMPILATION_CACHE_DIR): the resumed and the uninterrupted run compile the same
    programs, and the second compile becomes a disk read."""
    import jax

    folder = str(tmp_path_factory.getbasetemp() / "jax_cache")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return folder


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints kept in WORKDIR/checkpoints, oldest first."""
    from unified_petl.train import Checkpointer

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def write_data(folder: str, kind: str, n_train: int = 64, n_eval: int = 16, seed: int = 0):
    """(train.json, eval.json) for task sst2 (classification) or xsum (seq2seq).

    sst2: label 1 iff the sentence contains a word from w4..w20 (learnable quickly);
    xsum: the summary is the document's first two words.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = []
        for _ in range(n):
            length = int(rng.integers(3, 9))
            words = [f"w{int(i)}" for i in rng.integers(21, 95, size=length)]
            label = int(rng.integers(0, 2))
            if label:
                words[int(rng.integers(0, length))] = f"w{int(rng.integers(4, 21))}"
            text = " ".join(words)
            if kind == "sst2":
                rows.append({"sentence": text, "label": label})
            else:
                rows.append({"document": text, "summary": " ".join(words[:2])})
        path = os.path.join(folder, f"{kind}_{split}.json")
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        paths.append(path)
    return tuple(paths)


def tiny_config(base: str, train_file: str, eval_file: str, *, task: str = "sst2", **kw):
    """A ConfigDict for a tiny run; keyword arguments override top-level keys."""
    from unified_petl.train.config import base_config

    c = base_config()
    c.base = base
    c.task = task
    c.method = "lora(r=4)"
    c.seed = 0
    c.batch_size = 8
    c.total_steps = 6
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 3
    c.progress = False
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 2
    c.data.train_files = train_file
    c.data.eval_files = eval_file
    c.data.max_source_len = 16
    c.data.max_target_len = 8
    c.data.buckets = (8, 16)
    c.num_devices = 1
    for key, value in kw.items():
        c[key] = value
    return c


CONFIG_FILE = '''"""A tiny test run.

    unified-petl train --config {path} --workdir DIR
"""
import sys
sys.path.insert(0, {tests!r})
from tiny_runs import tiny_config


def get_config():
    return tiny_config({base!r}, {train!r}, {eval!r}, task={task!r}, total_steps={steps})
'''


def write_config_file(path: str, base: str, train: str, eval_: str, *, task: str = "sst2",
                      steps: int = 6) -> str:
    """A config .py file for the CLI tests."""
    with open(path, "w") as f:
        f.write(CONFIG_FILE.format(path=path, tests=os.path.dirname(os.path.abspath(__file__)),
                                   base=base, train=train, eval=eval_, task=task, steps=steps))
    return path
