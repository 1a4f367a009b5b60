"""Hugging Face checkpoint -> frozen Flax parameter tree.

`load_pretrained(name_or_path)` reads a local folder, or a hub id when online: the config via
transformers, the weights from model.safetensors (sharded too) or, only with torch's
`weights_only=True`, from pytorch_model.bin; the tokenizer when the folder has one. Every
expected weight must be present with the right shape, and every checkpoint weight must be
used or known to be unused (tied copies, buffers, pre-training heads): otherwise one error
names the keys. No pretrained weight is ever silently random.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import re
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from unified_petl.models.config import arch_config

SAFE_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"

# our module path (joined with '.') -> transformers name, applied in order
HF_RENAMES = {
    "seq2seq": [(r"\blayers_(\d+)\b", r"layers.\1"), (r"\.ffn\.", ".")],
    "encoder": [
        (r"^embeddings_", "embeddings."),
        (r"^encoder_layer_(\d+)", r"encoder.layer.\1"),
        (r"\.attention\.(query|key|value)\.", r".attention.self.\1."),
        (r"\.attention\.out\.", ".attention.output.dense."),
        (r"\.attention_LayerNorm\.", ".attention.output.LayerNorm."),
        (r"\.intermediate\.(weight|bias)$", r".intermediate.dense.\1"),
        (r"(layer\.\d+)\.output\.(weight|bias)$", r"\1.output.dense.\2"),
        (r"\.output_LayerNorm\.", ".output.LayerNorm."),
        (r"^pooler_dense\.", "pooler.dense."),
        (r"^classifier_(dense|out_proj)\.", r"classifier.\1."),
    ],
}
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
BODY_PREFIXES = ("model.", "roberta.", "bert.")
# checkpoint keys we know we do not need
IGNORED = [
    r"(encoder|decoder)\.embed_tokens\.weight",  # tied to shared
    r"lm_head\..*", r"cls\..*",  # pre-training heads (BART's is tied to shared)
    r".*position_ids", r".*\.token_type_ids",  # buffers
    r"(encoder|decoder)\.version", r"pooler\..*",  # RoBERTa's unused pooler (BERT's is used)
]
OPTIONAL = [r"final_logits_bias"]  # BartModel checkpoints lack it; it is zero there


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the keys."""


@dataclasses.dataclass
class Base:
    """A pretrained base model: transformers config, frozen parameter tree, tokenizer or None."""

    config: Any
    params: Any
    tokenizer: Any = None
    path: str = ""
    has_head: bool = False

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.params)


def fingerprint(params: Any) -> str:
    """A hash of every frozen weight (paths, shapes and bytes): ties a Δh to its base."""
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in sorted(traverse_util.flatten_dict(params, sep="/").items()):
        arr = np.asarray(leaf, np.float32)
        h.update(path.encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def hf_key(path: tuple[str, ...], seq2seq: bool) -> str:
    """Our parameter path -> transformers state-dict key (without the body prefix)."""
    name = ".".join(path[:-1] + (LEAF_NAMES.get(path[-1], path[-1]),))
    if name == "final_logits_bias.weight":
        return "final_logits_bias"
    for pattern, repl in HF_RENAMES["seq2seq" if seq2seq else "encoder"]:
        name = re.sub(pattern, repl, name)
    return name


def _resolve(name_or_path: str) -> str:
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CheckpointError(f"{name_or_path!r} is not a local folder and HF_HUB_OFFLINE=1; "
                              "pass a folder saved with save_pretrained, or go online")
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path, allow_patterns=[
        "*.json", "*.safetensors", "*.txt", "*.model", "*.bin", "sentencepiece*", "*.py"],
        ignore_patterns=["*onnx*", "*tf_model*", "*flax_model*", "*.msgpack", "*.h5"])


def read_state_dict(folder: str) -> dict[str, np.ndarray]:
    """All weights of a checkpoint folder as numpy arrays (safetensors preferred)."""
    from safetensors.numpy import load_file

    def shards(index_name, single):
        index = os.path.join(folder, index_name)
        if os.path.exists(index):
            with open(index) as f:
                return sorted(set(json.load(f)["weight_map"].values()))
        return [single] if os.path.exists(os.path.join(folder, single)) else []

    files = shards(SAFE_INDEX, "model.safetensors")
    state: dict[str, np.ndarray] = {}
    if files:
        for name in files:
            path = os.path.join(folder, name)
            try:
                state.update(load_file(path))
            except Exception as e:  # SafetensorError (truncated, not safetensors), OSError
                raise CheckpointError(f"{path}: cannot read the weights ({_first_line(e)}); "
                                      "the file is damaged or incomplete: download or save "
                                      "it again") from None
        return state
    files = shards(TORCH_INDEX, "pytorch_model.bin")
    if not files:
        raise CheckpointError(f"no model.safetensors or pytorch_model.bin in {folder}")
    import torch  # only for .bin checkpoints, and never with pickle code execution

    for name in files:
        path = os.path.join(folder, name)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refuses code in the pickle
            detail = next((line.split("error:", 1)[1].strip().split(". ")[0]
                           for line in str(e).splitlines() if "WeightsUnpickler error:" in line),
                          _first_line(e))
            raise CheckpointError(
                f"{path}: refused: the pickle holds Python objects besides tensors, which only "
                f"a code-running load could read ({detail}); save the weights as "
                "model.safetensors from an environment you trust") from None
        except Exception as e:  # truncated zip, not a torch file
            raise CheckpointError(f"{path}: cannot read the weights ({_first_line(e)}); the "
                                  "file is damaged or incomplete: download or save it "
                                  "again") from None
        state.update({k: v.float().numpy() if v.is_floating_point() else v.numpy()
                      for k, v in loaded.items()})
    return state


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries write paragraphs)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _strip_body_prefix(key: str) -> str:
    for prefix in BODY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def convert_state_dict(state: dict[str, np.ndarray], expected: Any, seq2seq: bool,
                       source: str = "checkpoint") -> Any:
    """Map a transformers state dict onto the shape tree `expected`; strict about keys."""
    state = {_strip_body_prefix(k): v for k, v in state.items()}
    flat_expected = traverse_util.flatten_dict(expected)
    out, missing, wrong_shape, used = {}, [], [], set()
    for path, leaf in flat_expected.items():
        key = hf_key(path, seq2seq)
        if key not in state:
            if any(re.fullmatch(p, key) for p in OPTIONAL):
                out[path] = np.zeros(leaf.shape, np.float32)
                continue
            missing.append(key)
            continue
        value = np.asarray(state[key], np.float32)
        if path[-1] == "kernel":
            value = value.T  # PyTorch Linear weight is [out, in]
        value = value.reshape(leaf.shape) if value.size == np.prod(leaf.shape) else value
        if value.shape != tuple(leaf.shape):
            wrong_shape.append(f"{key}: checkpoint {tuple(state[key].shape)} vs model "
                               f"{tuple(leaf.shape)}")
            continue
        out[path] = value
        used.add(key)
    unexpected = sorted(k for k in state if k not in used
                        and not any(re.fullmatch(p, k) for p in IGNORED))
    problems = []
    if missing:
        problems.append(f"missing weights {sorted(missing)}")
    if wrong_shape:
        problems.append(f"shape mismatches {wrong_shape}")
    if unexpected:
        problems.append(f"unexpected weights {unexpected}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems)
                              + " (is the config.json from the same model as the weights?)")
    return traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in out.items()})


def load_pretrained(name_or_path: str, *, tokenizer: bool = True) -> Base:
    """A local folder (save_pretrained) or a hub id -> Base(config, params, tokenizer)."""
    import transformers

    from unified_petl.build import build, shape_tree

    folder = _resolve(str(name_or_path))
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read the config of {name_or_path}: "
                              f"{str(e).splitlines()[0]}") from None
    cfg = arch_config(config)  # raises for unsupported architectures
    state = read_state_dict(folder)
    stripped = {_strip_body_prefix(k) for k in state}
    has_head = any(k.startswith("classifier.") for k in stripped) and not cfg.seq2seq
    model = build(config, "none", num_labels=cfg.num_labels if has_head else 0,
                  pretrained_head=has_head)
    params = convert_state_dict(state, shape_tree(model), cfg.seq2seq, source=str(name_or_path))
    tok = None
    if tokenizer:
        try:
            tok = transformers.AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, TypeError):
            tok = None  # a weights-only folder
        problem = tokenizer_problem(tok, cfg.vocab_size) if tok is not None else None
        if problem and has_tokenizer_files(folder):
            raise CheckpointError(
                f"the tokenizer files in {folder} do not belong to this model: {problem}; "
                "save the model's own tokenizer there (tokenizer.save_pretrained)")
        if problem:
            # transformers 5 builds an EMPTY tokenizer of the config's model type (5 tokens,
            # every word <unk>) from a folder without tokenizer files instead of raising:
            # this folder holds weights only (encode_split then says so).
            tok = None
    return Base(config=config, params=params, tokenizer=tok, path=folder, has_head=has_head)


# Files from which transformers reads a tokenizer (any one of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")


def has_tokenizer_files(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def tokenizer_problem(tok, rows: int) -> Optional[str]:
    """Why `tok` cannot be the tokenizer of a model with `rows` embedding rows, or None.

    Checks (each catches a tokenizer that would train on garbage without an error): no id
    beyond the embedding table (JAX's gather would not fail, it reads NaN or a clamped
    row); not far fewer tokens than rows (an empty tokenizer maps every word to <unk>); and
    a round trip of a string made of the tokenizer's own words (a few ordinary tokens
    spread over the vocabulary) comes back unchanged without <unk>.
    """
    vocab = tok.get_vocab()
    top = max(vocab.values(), default=-1)
    if top >= rows:
        return (f"its token ids reach {top} but the model's embedding table has {rows} rows "
                "(a tokenizer of another model)")
    if len(vocab) < rows // 2:
        return f"it has {len(vocab)} tokens for the model's {rows} embedding rows"
    special = set(tok.all_special_ids)
    words = []
    for i in range(0, top + 1, max(1, (top + 1) // 500)):
        word = tok.decode([i]).strip() if i not in special else ""
        if len(word) >= 2 and word.isalnum() and word not in words:
            words.append(word)
            if len(words) == 4:
                break
    if not words:
        return "none of its tokens is an ordinary word"
    text = " ".join(words)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    back = tok.decode(ids, skip_special_tokens=True)
    squash = lambda s: "".join(s.split()).lower()  # noqa: E731 (normalisers differ in these)
    if not ids or tok.unk_token_id in ids or squash(back) != squash(text):
        return f"the text {text!r} of its own words comes back as {back!r}"
    return None
