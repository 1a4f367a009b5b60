"""Parameter accounting: what a method trains, what it stores, and the paper's formula count.

Everything runs on shapes only (jax.eval_shape), so the shipped configs in configs/models/ are
enough: no weights, no FLOPs.

- trained: every Δh variable the optimiser updates (incl. the prefix MLP, adapter biases and
  layernorms, a new task head — the head is also reported on its own).
- stored: the Δh tree after `eject` (prefix MLPs replaced by the prefixes they produce).
- paper: the formula of the paper's Tables 9-11 (REFERENCE.md): per sub-layer prefix 2·l·d,
  adapters 2·r·d, LoRA r·(d_in + d_out) per projection, prompt l·d, masked = the masked
  leaves' size; biases, layernorms and the prefix MLP are not counted. Beyond the paper, the
  same rule: DoRA adds its magnitude vector, d_out per projection (Liu et al. 2024 count it
  with LoRA's A, B); IA3 one vector per target, d_out (output target) or d_in (input target)
  per projection (Liu et al. 2022: d_k + d_v + d_ff per layer); a learned gate (UniPELT) d_in
  per gate, its W_g without the bias. Labels: lora (A, B of LoRA, rsLoRA and DoRA), dora (the
  magnitudes), ia3, gate (every learned gate, whatever term it scales).
- percent_paper = 100 × paper / base_params.
- sparse terms (unified_petl.delta.sparse) count their k trained values as trained, stored and
  paper parameters of "sparse@params", and their int32 positions as `index_bytes` (4 per
  value; not parameters). Without resolved counts (no mask yet) k comes from the shapes
  alone, as the mask will have it: round(density × size) per leaf (select=per_leaf) or in
  total (global, the new head inside the budget; per_layer then says "sparse:global").
  Diff pruning ("diff@params") trains w and the gate logits in stage 1 and stores the k
  values of its projection.
"""
from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from typing import Any

from flax import traverse_util

from unified_petl.delta.spec import Method, parse_method
from unified_petl.models.config import ArchConfig, arch_config
from unified_petl.shipped import config_path

MODELS_DIR = config_path("models")  # shipped as package data (unified_petl.shipped)


def shipped_config(name: str):
    """'bart-large' or 'facebook/bart-large' -> the transformers config in configs/models/."""
    import transformers

    short = name.split("/")[-1]
    folder = os.path.join(MODELS_DIR, short)
    if os.path.isfile(os.path.join(folder, "config.json")):
        return transformers.AutoConfig.from_pretrained(folder)
    if os.path.isfile(os.path.join(name, "config.json")):
        return transformers.AutoConfig.from_pretrained(name)
    known = sorted(os.listdir(MODELS_DIR)) if os.path.isdir(MODELS_DIR) else []
    raise ValueError(f"unknown base {name!r}: give a folder with a config.json or one of "
                     f"{', '.join(known)}")


def _size(shape) -> int:
    return int(math.prod(shape))


def term_label(path: tuple[str, ...], masked_paths: set) -> str:
    """Which axis-point a Δh leaf belongs to, from its path in the delta tree."""
    from unified_petl.delta import diff_pruning, sparse

    joined = "/".join(path)
    if path in masked_paths:
        return "masked@params"
    if sparse.is_values(path[-1]) or sparse.is_index(path[-1]):
        return "sparse@params"
    if path[-1].endswith(diff_pruning.W) or diff_pruning.is_gate(path[-1]):
        return "diff@params"
    if path[-1].endswith(("gate_kernel", "gate_bias")):
        return "gate"
    if path[-1] == "ia3_l":
        return "ia3"
    if path[-1] == "lora_magnitude":
        return "dora"
    if any(p.startswith("prefix_") for p in path):
        return "prefix@heads"
    if path[-1] == "prompt":
        return "prompt@embed"
    if "mh_adapter" in path:
        return "adapter@heads"
    if "attn_adapter" in path:
        return "adapter@attn"
    if "ffn_adapter" in path:
        return "adapter@ffn"
    if path[-1] in ("lora_a", "lora_b"):
        return "lora"
    if path[0].startswith(("classifier", "pooler")):
        return "head"
    return f"other:{joined}"


def layer_of(path: tuple[str, ...]) -> str:
    """'encoder/3', 'decoder/0', ... or 'global' for Δh outside the layers."""
    for i, part in enumerate(path):
        m = re.fullmatch(r"(?:encoder_)?layers?_(\d+)", part)
        if m:
            stack = path[i - 1] if i and path[i - 1] in ("encoder", "decoder") else "encoder"
            return f"{stack}/{int(m.group(1))}"
    return "global"


def _projection(cfg: ArchConfig, target: str) -> tuple[int, int, int]:
    """(d_in, d_out, how many) of a LoRA / IA3 target across the model."""
    d, ffn = cfg.d_model, cfg.ffn_dim
    if target in ("q", "k", "v", "o"):
        return d, d, cfg.encoder_layers + 2 * cfg.decoder_layers  # enc self, dec self, cross
    n_ffn = cfg.encoder_layers + cfg.decoder_layers
    return (d, ffn, n_ffn) if target == "fc1" else (ffn, d, n_ffn)


def _paper_count(method: Method, cfg: ArchConfig, masked_size: int) -> dict[str, int]:
    d = cfg.d_model
    n_layers_attn = cfg.encoder_layers + 2 * cfg.decoder_layers  # enc self, dec self, cross
    n_ffn = cfg.encoder_layers + cfg.decoder_layers
    out: dict[str, int] = defaultdict(int)
    for t in method.terms:
        if t.form == "prefix":
            out["prefix@heads"] += 2 * t.size * d * n_layers_attn
            out["gate"] += d * n_layers_attn if t.learn_gate else 0
        elif t.form == "prompt":
            out["prompt@embed"] += t.size * d
        elif t.form == "adapter":
            n = n_ffn if t.at == "ffn" else n_layers_attn
            out[f"adapter@{t.at}"] += 2 * t.size * d * n
            out["gate"] += d * n if t.learn_gate else 0
        elif t.form == "lora":
            for target in t.targets:
                d_in, d_out, n = _projection(cfg, target)
                out["lora"] += t.size * (d_in + d_out) * n
                out["dora"] += d_out * n if t.dora else 0
                out["gate"] += d_in * n if t.learn_gate else 0
        elif t.form == "ia3":
            for target in t.targets:
                d_in, d_out, n = _projection(cfg, target)
                out["ia3"] += (d_in if target in t.input_targets else d_out) * n
        elif t.form == "masked":
            out["masked@params"] = masked_size
    return {label: n for label, n in out.items() if n}


def count(config: Any, method: "str | Method", *, num_labels: int = 0) -> dict[str, Any]:
    """Parameter counts of `method` on the base model of `config` (shape evaluation only).

    Returns {base_params, trained, stored, paper, percent_paper, percent_trained, head,
    per_axis: {label: {trained, stored, paper}}, per_layer: {layer: trained}}.
    """
    from unified_petl.build import build, check_patterns, shape_tree
    from unified_petl.delta import sparse

    cfg = arch_config(config)
    method = parse_method(method) if isinstance(method, str) else method
    unresolved = method.sparse if method.sparse is not None and not method.sparse.counts \
        else None
    shape_method = method if unresolved is None else Method(
        terms=tuple(t for t in method.terms if t is not unresolved), name=method.name,
        train_head=method.train_head)
    model = build(config, shape_method, num_labels=num_labels, pretrained_head=False)
    if unresolved is None:
        method = model.method  # resolved for this base
    shapes = shape_tree(model, None)  # one trace for both collections
    check_patterns(method, shapes.get("params", {}))
    params = traverse_util.flatten_dict(shapes.get("params", {}))
    delta = shapes.get("delta", {})
    flat_delta = traverse_util.flatten_dict(delta)
    base_params = sum(_size(v.shape) for v in params.values())
    masked_paths = {p for p in flat_delta if p in params}
    masked_size = sum(_size(flat_delta[p].shape) for p in masked_paths)
    if method.full:
        masked_size = base_params

    per_axis: dict[str, dict[str, int]] = defaultdict(lambda: {"trained": 0, "stored": 0,
                                                               "paper": 0})
    per_layer: dict[str, int] = defaultdict(int)
    for path, leaf in flat_delta.items():
        label = term_label(path, masked_paths)
        if sparse.is_index(path[-1]):  # fixed positions: stored as bytes, never trained
            per_axis[label]["index_bytes"] = (per_axis[label].get("index_bytes", 0)
                                              + 4 * _size(leaf.shape))
            continue
        per_axis[label]["trained"] += _size(leaf.shape)
        per_layer[layer_of(path)] += _size(leaf.shape)
    for path, leaf in flat_delta.items():
        if not sparse.is_index(path[-1]):
            per_axis[term_label(path, masked_paths)]["stored"] += stored_size(
                path, leaf.shape, flat_delta)
    _elementwise_from_shapes(method, unresolved, params, flat_delta, per_axis, per_layer)
    for label, n in _paper_count(method, cfg, masked_size).items():
        per_axis[label]["paper"] += n
    for label in ("sparse@params", "diff@params"):
        if label in per_axis:
            per_axis[label]["paper"] = per_axis[label]["stored"]
    if method.full:
        per_axis["full@params"] = {"trained": base_params, "stored": base_params,
                                   "paper": base_params}
    if "head" in per_axis and not method.train_head:  # head=false: stored, not trained
        per_axis["head"]["trained"] = 0
    head = per_axis.get("head", {}).get("trained", 0)
    trained = sum(v["trained"] for v in per_axis.values())
    stored = sum(v["stored"] for v in per_axis.values())
    paper = sum(v["paper"] for v in per_axis.values())
    return {
        "base": getattr(config, "_name_or_path", "") or cfg.kind,
        "method": method.name,
        "base_params": base_params,
        "trained": trained,
        "stored": stored,
        "index_bytes": sum(v.get("index_bytes", 0) for v in per_axis.values()),
        "head": head,
        "paper": paper,
        "percent_paper": 100.0 * paper / base_params,
        "percent_trained": 100.0 * trained / base_params,
        "per_axis": {k: dict(v) for k, v in sorted(per_axis.items())},
        "per_layer": dict(sorted(per_layer.items())),
    }


def _elementwise_from_shapes(method, unresolved, params, flat_delta, per_axis, per_layer):
    """The k of a sparse term without a mask yet, and diff pruning's stored k (see the
    module docstring), from the shapes of the frozen weights and of the new head."""
    from unified_petl.delta import sparse

    term = unresolved if unresolved is not None else method.diff
    if term is None:
        return
    sizes = {p: _size(params[tuple(p.split("/"))].shape) for p in sparse.candidates(
        {"/".join(k): v.shape for k, v in params.items()}, term.pattern)}
    head = sum(_size(v.shape) for p, v in flat_delta.items() if p[0].startswith("classifier")
               ) if method.train_head and term.head_in_budget else 0
    k = sparse.budget(term.density, term.select, sizes, head)
    total = sum(k.values()) if isinstance(k, dict) else k
    label = "sparse@params" if unresolved is not None else "diff@params"
    entry = per_axis[label]
    if unresolved is not None:
        entry["trained"] += total
        if isinstance(k, dict):
            for path, n in k.items():
                per_layer[layer_of(tuple(path.split("/")))] += n
        else:
            per_layer["sparse:global"] += total
    entry["stored"] = total
    entry["index_bytes"] = 4 * total


def count_for(base: str, method: "str | Method", **kw) -> dict[str, Any]:
    """`count` for a shipped config name ('bart-large') or a folder with a config.json."""
    result = count(shipped_config(base), method, **kw)
    result["base"] = base
    return result


def stored_size(path: tuple[str, ...], shape, flat_delta: dict) -> int:
    """Size of a Δh leaf after `eject`: a prefix MLP is stored as its output [L, 2, l, d]."""
    if path[-1] in PREFIX_MLP_LEAVES:
        if path[-1] != "w2":
            return 0
        l = flat_delta[path[:-1] + ("embedding",)].shape[0]
        return l * shape[1]  # l × (L·2·d)
    return _size(shape)


PREFIX_MLP_LEAVES = ("embedding", "w1", "b1", "w2", "b2")


def format_count(result: dict[str, Any]) -> str:
    """A small human-readable table of `count`'s result."""
    lines = [f"base {result['base']}: {result['base_params']:,} parameters; "
             f"method {result['method']}",
             f"{'axis':<18}{'trained':>14}{'stored':>14}{'paper':>14}"]
    for label, v in result["per_axis"].items():
        lines.append(f"{label:<18}{v['trained']:>14,}{v['stored']:>14,}{v['paper']:>14,}")
    lines.append(f"{'total':<18}{result['trained']:>14,}{result['stored']:>14,}"
                 f"{result['paper']:>14,}")
    lines.append(f"paper formula: {result['percent_paper']:.2f}% of the base; trained: "
                 f"{result['percent_trained']:.2f}%")
    if result.get("index_bytes"):
        lines.append(f"sparse positions: {result['index_bytes']:,} bytes (int32, stored "
                     "with the values)")
    return "\n".join(lines)
