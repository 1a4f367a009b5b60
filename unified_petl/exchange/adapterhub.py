"""Δh -> AdapterHub (`adapters` 1.3) adapter folders, as `model.save_adapter` writes them.

Layout (adapters/loading.py, utils.py): adapter_config.json {config, hidden_size, model_class,
model_name, model_type, name, version}; the weights as adapter.safetensors and, when torch is
installed, pytorch_adapter.bin (what `load_adapter(DIR)` reads by default; without torch, load
with `use_safetensors=True`); a new classification head as head_config.json +
model_head.safetensors / pytorch_model_head.bin (static-head layout: classifier.*). Load with

    model = transformers.<model_class>.from_pretrained(BASE); adapters.init(model)
    name = model.load_adapter(DIR, set_active=True)

Settings that reproduce our function (adapters/methods/modeling.py Adapter, ParallelAdapter;
models/bart, mbart, roberta: where the adapter layers are called):
- bottleneck: BnConfig with original_ln_before=False (the SeqBnConfig default True applies the
  sub-layer's LayerNorm before the adapter as well), ReLU, ln_before = our ln=in, ln_after =
  our ln=out (LN(s·up), residual after it), scaling s (or "learned"), residual_before_ln=True.
  Attention adapters sit at every attention: mh_adapter plus cross_adapter on (m)BART.
  Sequential: x = the sub-layer output h, h + s·A(h) before the residual and LayerNorm, as ours.
  Parallel FFN: x = the sub-layer input (mBART: the un-normalised residual), as ours.
- parallel attention adapter: AdapterHub adds it after W_o, ours before: W_o A(x) is again an
  adapter with W_up' = W_o W_up, b_up' = W_o b_up (exact; the export folds W_o in). Refused
  with ln=out (W_o does not pass through a LayerNorm) and on mBART (AdapterHub feeds it the
  un-normalised residual, ours LN(x)).
- prefix tuning: PrefixTuningConfig(flat=True) with the ejected prefixes; encoder self,
  decoder self and cross prefixes (encoder_prefix, self_prefix, cross_prefix), concatenated
  to K/V inside the attention, positions untouched, as ours.
- dropout: AdapterHub drops the adapter output, ours the hidden activation; the rate is
  exported, the place differs (training only: evaluation has no dropout).
Refused with one line: the multi-head adapter, the ungated prefix ablation (prefix_nogate),
learned gates (learn_gate, unipelt: adapters' use_gating averages the gate over the sequence,
ours gates each position), prompt tuning, LoRA / DoRA / IA3 (use --format peft), masked
offsets (BitFit), full fine-tuning.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from unified_petl.exchange.sites import Export, sites

CONFIG = "adapter_config.json"
WEIGHTS = "adapter.safetensors"
TORCH_WEIGHTS = "pytorch_adapter.bin"
HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "model_head.safetensors"
TORCH_HEAD_WEIGHTS = "pytorch_model_head.bin"
VERSION = "adapters.1.3.0"
KINDS = ("bart", "mbart", "roberta")  # the bases make check-adapters compares

# BnConfig fields as adapters 1.3 writes them (configuration/adapter_config.py BnConfig)
BN_DEFAULTS = {
    "adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0,
    "factorized_phm_W": True, "factorized_phm_rule": False,
    "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
    "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None,
    "is_parallel": False, "learn_phm": True, "leave_out": [], "ln_after": False,
    "ln_before": False, "mh_adapter": False, "non_linearity": "relu",
    "original_ln_after": True, "original_ln_before": False, "output_adapter": False,
    "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001,
    "phm_layer": False, "phm_rank": 1, "reduction_factor": 16, "residual_before_ln": True,
    "scaling": 1.0, "shared_W_phm": False, "shared_phm_rule": True, "stochastic_depth": 0.0,
    "use_gating": False,
}
PREFIX_DEFAULTS = {
    "architecture": "prefix_tuning", "bottleneck_size": 512, "cross_prefix": True,
    "dropout": 0.0, "encoder_prefix": True, "flat": True, "init_weights_seed": None,
    "leave_out": [], "non_linearity": "tanh", "prefix_length": 30, "shared_gating": True,
    "use_gating": False,
}
PREFIX_LOCATIONS = {"prefix_encoder": "encoder_prefix", "prefix_decoder": "self_prefix",
                    "prefix_cross": "cross_prefix"}


def _reduction_factor(d: int, r: int) -> float:
    """A reduction factor f with int(d // f) == r (adapters sizes the bottleneck so)."""
    for f in (d / r, d / (r + 0.5)):
        if int(d // f) == r:
            return f
    raise ValueError(f"no reduction factor gives r={r} for d={d}")


def _check(ex: Export) -> None:
    fmt = "AdapterHub"
    if ex.cfg.kind not in KINDS:
        raise ex.refuse(fmt, f"the AdapterHub layout is checked for {', '.join(KINDS)} "
                        f"bases only, not {ex.cfg.kind}")
    if not ex.method.terms:
        raise ex.refuse(fmt, "the method has no Δh term to export")
    for term in ex.method.terms:
        if term.learn_gate:  # adapters' use_gating: torch.mean(σ(W x), dim=1) (modeling.py)
            raise ex.refuse(fmt, "AdapterHub's gate (use_gating) is the mean over the "
                            "sequence, ours (learn_gate, unipelt) gates every position")
    for term in ex.method.terms:
        if term.form == "adapter" and term.at == "heads":
            raise ex.refuse(fmt, "AdapterHub has no multi-head adapter (mh_pa)")
        elif term.form == "adapter" and term.at == "attn" and term.insertion == "parallel":
            if term.layernorm == "out":
                raise ex.refuse(fmt, "a parallel attention adapter with ln=out: AdapterHub adds "
                                "it after W_o, and W_o cannot be folded through the LayerNorm")
            if ex.cfg.pre_ln:
                raise ex.refuse(fmt, "a parallel attention adapter on mBART: AdapterHub feeds "
                                "it the un-normalised residual, ours reads LN(x)")
        elif term.form == "prefix" and term.composition != "gated":
            raise ex.refuse(fmt, "AdapterHub's prefix tuning is the gated (concatenated) form; "
                            "the ungated ablation (prefix_nogate) has no counterpart")
        elif term.form not in ("adapter", "prefix"):
            what = {"lora": "LoRA (export it with --format peft)",
                    "ia3": "IA3 (export it with --format peft)", "prompt": "prompt tuning",
                    "masked": "masked offsets (BitFit)"}.get(term.form, f"{term.form} terms")
            raise ex.refuse(fmt, f"{what} is not exported to AdapterHub ({term.short()})")


def _bn_config(ex: Export, term) -> dict:
    config = dict(BN_DEFAULTS)
    attn = term.at == "attn"
    config.update(
        mh_adapter=attn, cross_adapter=attn and ex.cfg.seq2seq, output_adapter=not attn,
        reduction_factor=_reduction_factor(ex.cfg.d_model, term.size),
        ln_before=term.layernorm == "in", ln_after=term.layernorm == "out",
        is_parallel=term.insertion == "parallel", dropout=float(term.dropout),
        scaling="learned" if term.learn_scale else float(term.scale),
        init_weights="mam_adapter" if term.init == "lora" else "bert")
    return config


def _adapter_key(ex: Export, site: tuple[str, ...], name: str) -> str:
    """Our adapter module path -> its AdapterHub module prefix (ending in '.')."""
    if ex.cfg.seq2seq:  # ('encoder', 'layers_3', 'self_attn', 'attn_adapter'), (.., 'ffn', ..)
        stack, layer = site[0], int(site[1].split("_")[1])
        where = {"self_attn": "attention_adapters", "encoder_attn": "cross_attention_adapters",
                 "ffn": "output_adapters"}[site[2]]
        return f"model.{stack}.layers.{layer}.{where}.adapters.{name}."
    layer = int(re.fullmatch(r"encoder_layer_(\d+)", site[0]).group(1))
    where = "attention.output" if site[-1] == "attn_adapter" else "output"
    return f"roberta.encoder.layer.{layer}.{where}.adapters.{name}."


def _adapter_tensors(ex: Export, site: tuple[str, ...], term) -> dict[str, np.ndarray]:
    """One adapter's weights in AdapterHub's names (PyTorch layout)."""
    get = lambda leaf: ex.delta[site + (leaf,)]  # noqa: E731
    up_kernel, up_bias = get("up_kernel"), get("up_bias")
    if term.at == "attn" and term.insertion == "parallel":  # fold W_o: [r, d] @ [d, d]
        from unified_petl.models.layers import LORA_NAMES

        flat_params = {p[:-1] for p in _flat(ex.base.params)}
        w_o = next(site[:-1] + (n,) for n in LORA_NAMES["o"] if site[:-1] + (n,) in flat_params)
        kernel = ex.frozen(w_o)
        up_kernel, up_bias = up_kernel @ kernel, up_bias @ kernel
    out, linear = {}, "adapter_down.0"
    if term.layernorm == "in":  # the LN is registered twice (adapter_norm_before and down.0)
        for prefix in ("adapter_norm_before", "adapter_down.0"):
            out[f"{prefix}.weight"], out[f"{prefix}.bias"] = get("ln_in_scale"), get("ln_in_bias")
        linear = "adapter_down.1"
    out[f"{linear}.weight"], out[f"{linear}.bias"] = get("down_kernel").T, get("down_bias")
    out["adapter_up.weight"], out["adapter_up.bias"] = up_kernel.T, up_bias
    if term.layernorm == "out":
        out["adapter_norm_after.weight"] = get("ln_out_scale")
        out["adapter_norm_after.bias"] = get("ln_out_bias")
    if term.learn_scale:
        out["scaling"] = np.reshape(get("scale"), (1,))
    return out


def _flat(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree)


def _attention_modules(ex: Export) -> list[str]:
    """Every attention module that holds a prefix_tuning layer (its pool is shared, and each
    one's state dict lists the whole pool, as save_adapter writes it)."""
    cfg = ex.cfg
    if cfg.seq2seq:
        return ([f"model.encoder.layers.{i}.self_attn" for i in range(cfg.encoder_layers)]
                + [f"model.decoder.layers.{i}.{a}" for i in range(cfg.decoder_layers)
                   for a in ("self_attn", "encoder_attn")])
    return [f"roberta.encoder.layer.{i}.attention.self" for i in range(cfg.encoder_layers)]


def _prefix_tensors(ex: Export, name: str) -> dict[str, np.ndarray]:
    """Our prefix sets kv [L, 2, l, d] -> flat control_trans [l·L·2·d] per location, laid out
    as adapters' FlatPrefixTuning views it: [l, L·2, H, d_h], rows 2i / 2i+1 = K / V of layer i."""
    pool = {}
    for path, kv in ex.delta.items():
        if path[-1] == "kv" and path[-2] in PREFIX_LOCATIONS:
            location = "self_prefix" if not ex.cfg.seq2seq else PREFIX_LOCATIONS[path[-2]]
            pool[location] = np.ascontiguousarray(kv.transpose(2, 0, 1, 3).reshape(-1))
    out = {}
    top = "model." if ex.cfg.seq2seq else "roberta."
    for module in _attention_modules(ex) + [top.rstrip(".")]:
        middle = ".prefix_tuning.pool" if module != top.rstrip(".") else ".prefix_tuning"
        for location, value in pool.items():
            out[f"{module}{middle}.prefix_tunings.{name}.{location}.control_trans"] = value
    return out


def write(ex: Export, out_dir: str, name: str = "unified_petl") -> list[str]:
    """Write `ex` as an AdapterHub adapter named `name` into the (new, empty) `out_dir`."""
    _check(ex)
    configs, tensors = [], {}
    for term in ex.method.terms:
        if term.form == "adapter":
            configs.append(_bn_config(ex, term))
            leaf = "attn_adapter" if term.at == "attn" else "ffn_adapter"
            for site in sites(ex.delta, "down_kernel"):
                if site[-1] == leaf:
                    for key, value in _adapter_tensors(ex, site, term).items():
                        tensors[_adapter_key(ex, site, name) + key] = value
        elif term.form == "prefix":
            configs.append({**PREFIX_DEFAULTS, "prefix_length": term.size,
                            "dropout": float(term.dropout)})
            tensors.update(_prefix_tensors(ex, name))
    config = configs[0] if len(configs) == 1 else {"architecture": "union", "configs": configs}
    files = [CONFIG]
    _write_json(os.path.join(out_dir, CONFIG), {
        "config": config, "hidden_size": ex.cfg.d_model, "model_class": ex.hf_class,
        "model_name": ex.base_name, "model_type": ex.cfg.kind, "name": name,
        "version": VERSION})
    files += _write_weights(out_dir, tensors, WEIGHTS, TORCH_WEIGHTS)
    if ex.new_head:
        labels = {f"LABEL_{i}": i for i in range(ex.num_labels)}
        _write_json(os.path.join(out_dir, HEAD_CONFIG), {
            "config": None, "hidden_size": ex.cfg.d_model, "label2id": labels,
            "model_class": ex.hf_class, "model_name": ex.base_name,
            "model_type": ex.cfg.kind, "name": None, "num_labels": ex.num_labels,
            "version": VERSION})
        files.append(HEAD_CONFIG)
        files += _write_weights(out_dir, ex.head_tensors(), HEAD_WEIGHTS, TORCH_HEAD_WEIGHTS)
    return files


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def _write_weights(out_dir: str, tensors: dict, safe_name: str, torch_name: str) -> list[str]:
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, safe_name))
    try:
        import torch
    except ImportError:  # the safetensors file alone: load_adapter(..., use_safetensors=True)
        return [safe_name]
    torch.save({k: torch.from_numpy(v.copy()) for k, v in tensors.items()},
               os.path.join(out_dir, torch_name))
    return [safe_name, torch_name]
