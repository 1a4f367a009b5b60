"""Δh <-> Hugging Face PEFT adapter folders (adapter_config.json + adapter_model.safetensors).

Export (`write`): LoRA terms, for `peft.PeftModel.from_pretrained(transformers_model, DIR)`.
PEFT's LoRA computes y = W x + b + (α/r) B A drop(x) (peft/tuners/lora/layer.py, Linear.forward),
ours (α/r) drop(x) A B in [d_in, d_out] layout: lora_A.weight = Aᵀ [r, d_in], lora_B.weight =
Bᵀ [d_out, r], lora_alpha = s·r. A new task head travels as `modules_to_save` (PEFT's own
layout for SEQ_CLS: base_model.model.classifier.*).

Refused, each with one line (PEFT cannot hold the term, and dropping it would change the
function):
- prefix tuning. PEFT 0.21 + transformers 5 give (m)BART decoder self-attention prefixes
  only (peft_model.py get_prompt: the cross-attention cache is replaced by an empty
  DynamicCache) and shift the decoder positions by l (modeling_bart.py BartDecoder.forward:
  position_ids = arange(T) + cache_length); we prefix the encoder, the decoder and the
  cross-attention and keep the positions (REFERENCE.md). On RoBERTa, PEFT's prefix tuning of
  a classifier raises "Model does not support past key values" (the model's keyword is
  `cache` now) and would shift the positions by l as well (RobertaEmbeddings cache_length).
- adapters, the multi-head adapter, prompts, masked offsets (BitFit), full fine-tuning: PEFT
  has no such tuner with our placement.

Import (`read`): a PEFT LoRA folder -> (model, Δh) with a `lora(...)` method, exact: the same
per-projection products and scale. A PEFT adapter that does not put LoRA on every projection
of a target (layers_to_transform, a narrower regex) is refused: our term covers every layer.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from typing import Any

import numpy as np

from unified_petl.delta.spec import LORA_TARGETS
from unified_petl.exchange.sites import Export, ExchangeError, module_name, sites

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
TORCH_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."
# the peft release whose layout this module writes and reads (checked by tests/test_exchange.py)
PEFT_LAYOUT = "0.21.2"

TASK_TYPES = {"bart": "SEQ_2_SEQ_LM", "mbart": "SEQ_2_SEQ_LM"}


def _task_type(ex: Export) -> str:
    if ex.cfg.seq2seq:
        return TASK_TYPES[ex.cfg.kind]
    return "SEQ_CLS" if ex.num_labels else "FEATURE_EXTRACTION"


def _target_pattern(names: list[str]) -> str:
    """Module names -> one regex PEFT matches with re.fullmatch (layer numbers as \\d+)."""
    generic = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names})
    return "|".join(generic)


def write(ex: Export, out_dir: str) -> list[str]:
    """Write `ex` as a PEFT LoRA adapter into the (new, empty) folder `out_dir`."""
    from safetensors.numpy import save_file

    fmt = "PEFT"
    for term in ex.method.terms:
        if term.form == "prefix":
            raise ex.refuse(fmt, "PEFT's prefix tuning holds (m)BART decoder self-attention "
                            "prefixes only and shifts positions by l (RoBERTa: it does not run "
                            "on transformers 5), while this prefix also sits in the encoder and "
                            "cross-attention; use --format adapters")
        if term.form != "lora":
            what = {"adapter": "bottleneck adapters" if term.at != "heads"
                    else "the multi-head adapter", "prompt": "prompt tuning",
                    "masked": "masked offsets (BitFit)"}.get(term.form, term.form)
            raise ex.refuse(fmt, f"PEFT has no counterpart of {what} ({term.short()}); "
                            "export LoRA methods to PEFT, adapters and prefixes with "
                            "--format adapters")
    lora = ex.method.of("lora")
    if not lora:
        raise ex.refuse(fmt, "the method has no LoRA term to export")
    if len({t.dropout for t in lora}) > 1:
        raise ex.refuse(fmt, "its LoRA terms have different dropouts; PEFT has one "
                        "lora_dropout per adapter")
    from unified_petl.models.layers import LORA_NAMES

    tensors, by_term = {}, defaultdict(list)
    for site in sites(ex.delta, "lora_a"):
        name = ex.module(site)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = ex.delta[site + ("lora_a",)].T
        tensors[f"{PREFIX}{name}.lora_B.weight"] = ex.delta[site + ("lora_b",)].T
        target = next(t for t, names in LORA_NAMES.items() if site[-1] in names)
        by_term[ex.method.lora_for(target)].append(name)
    for key, value in ex.head_tensors().items():
        tensors[PREFIX + key] = value
    first = lora[0]
    config = {
        "peft_type": "LORA", "task_type": _task_type(ex), "peft_version": PEFT_LAYOUT,
        "base_model_name_or_path": ex.base_name, "revision": None, "inference_mode": True,
        "r": first.size, "lora_alpha": first.scale * first.size,
        "lora_dropout": float(first.dropout), "use_rslora": False, "use_dora": False,
        "target_modules": _target_pattern([n for names in by_term.values() for n in names]),
        "rank_pattern": {}, "alpha_pattern": {}, "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
        "modules_to_save": ["classifier"] if ex.new_head else None,
    }
    for term, names in by_term.items():
        if (term.size, term.scale) != (first.size, first.scale):
            pattern = _target_pattern(names)
            config["rank_pattern"][pattern] = term.size
            config["alpha_pattern"][pattern] = term.scale * term.size
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
    return [CONFIG, WEIGHTS]


# ---------------------------------------------------------------------------------- import
# adapter_config.json keys that change what the adapter computes in ways our lora cannot
# hold: each must be absent or falsy ("none" for bias).
UNSUPPORTED = ("use_dora", "fan_in_fan_out", "layer_replication", "target_parameters",
               "trainable_token_indices", "lora_bias", "use_qalora", "use_bdlora",
               "alora_invocation_tokens", "megatron_config")


def read_weights(folder: str) -> dict[str, np.ndarray]:
    """adapter_model.safetensors (or .bin, read with torch's weights_only) -> numpy arrays."""
    path = os.path.join(folder, WEIGHTS)
    try:
        if os.path.isfile(path):
            from safetensors.numpy import load_file

            return load_file(path)
        path = os.path.join(folder, TORCH_WEIGHTS)
        if not os.path.isfile(path):
            raise ExchangeError(f"{folder} has no {WEIGHTS} or {TORCH_WEIGHTS}; give a folder "
                                "written by PEFT's save_pretrained")
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    except ExchangeError:
        raise
    except Exception as e:  # SafetensorError, UnpicklingError, a truncated file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExchangeError(f"{path}: cannot read the adapter weights ({first}); the file is "
                            "damaged or not a PEFT adapter") from None


def _scale_of(config: dict, name: str, r: int) -> float:
    """PEFT's scaling of module `name` (lora_alpha / r, or / √r with use_rslora), with the
    alpha_pattern rule of peft.utils.other.get_pattern_key."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            alpha = value
            break
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else r)


def read(folder: str, base) -> tuple[Any, dict]:
    """A PEFT LoRA folder -> (model built on base.config with its lora method, Δh tree)."""
    import jax.numpy as jnp
    from flax import traverse_util

    from unified_petl.build import build, shape_tree
    from unified_petl.models.config import arch_config
    from unified_petl.models.layers import LORA_NAMES
    from unified_petl.models.loading import _strip_body_prefix, hf_key

    with open(os.path.join(folder, CONFIG)) as f:
        config = json.load(f)
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ExchangeError(f"{folder} holds a PEFT {kind} adapter; import_delta reads LORA "
                            "adapters")
    for key in UNSUPPORTED:
        if config.get(key):
            raise ExchangeError(f"{folder}: PEFT option {key}={config[key]!r} has no "
                                "counterpart in unified-petl's lora; import adapters without it")
    if config.get("bias", "none") != "none":
        raise ExchangeError(f"{folder}: bias={config['bias']!r} trains biases besides LoRA; "
                            "import_delta reads adapters with bias='none'")
    extra = [m for m in (config.get("modules_to_save") or []) if m not in ("classifier", "score")]
    if extra:
        raise ExchangeError(f"{folder}: modules_to_save {extra} (whole trained modules) have "
                            "no place in a LoRA Δh; only a classification head does")
    cfg = arch_config(base.config)
    raw = {k.removeprefix(PREFIX): v for k, v in read_weights(folder).items()}
    state = {_strip_body_prefix(k): v for k, v in raw.items()}
    # PEFT matches rank / alpha patterns against the module names in its model (with the body)
    full_name = {_strip_body_prefix(k): k for k in raw}
    odd = sorted(k for k in state if not k.startswith("classifier.")
                 and not re.search(r"\.lora_[AB]\.weight$", k))
    if odd:
        raise ExchangeError(f"{folder}: weights {odd[:3]} are not LoRA factors of a linear "
                            "layer (embedding LoRA, DoRA magnitudes ...); import_delta reads "
                            "plain LoRA")

    # every LoRA site our model has, by transformers name
    probe = build(base.config, f"lora(r=1, at={'+'.join(LORA_TARGETS)})",
                  num_labels=0 if not cfg.seq2seq else None, pretrained_head=False)
    names = {module_name(site, cfg.seq2seq): site
             for site in sites(traverse_util.flatten_dict(shape_tree(probe, "delta")), "lora_a")}
    found, unknown = {}, []
    for key in state:
        if key.endswith(".lora_A.weight"):
            name = key[:-len(".lora_A.weight")]
            (found.__setitem__(name, names[name]) if name in names else unknown.append(name))
    if unknown:
        raise ExchangeError(f"{folder}: LoRA on {unknown[:3]}, which unified-petl's lora "
                            f"cannot target on this {cfg.kind} base (targets: "
                            f"{', '.join(LORA_TARGETS)})")
    if not found:
        raise ExchangeError(f"{folder} holds no LoRA weights")
    groups: dict[str, dict] = {}
    for name, site in found.items():
        target = next(t for t, mods in LORA_NAMES.items() if site[-1] in mods)
        r = int(state[f"{name}.lora_A.weight"].shape[0])
        spec = (r, _scale_of(config, full_name[f"{name}.lora_A.weight"][:-len(".lora_A.weight")],
                             r))
        group = groups.setdefault(target, {"spec": spec, "sites": []})
        if group["spec"] != spec:
            raise ExchangeError(f"{folder}: the {target} projections have different ranks or "
                                "alphas; unified-petl's lora has one r and scale per target")
        group["sites"].append(site)
    for target, group in groups.items():
        every = [s for n, s in names.items() if s[-1] in LORA_NAMES[target]]
        if len(group["sites"]) != len(every):
            raise ExchangeError(f"{folder}: LoRA on {len(group['sites'])} of the {len(every)} "
                                f"{target} projections (layers_to_transform or a narrower "
                                "target_modules); unified-petl's lora term covers every one")

    by_spec = defaultdict(list)
    for target in LORA_TARGETS:  # a canonical order of targets
        if target in groups:
            by_spec[groups[target]["spec"]].append(target)
    dropout = float(config.get("lora_dropout", 0.0) or 0.0)
    method = "+".join(
        f"lora(r={r}, alpha={s * r!r}, at={'+'.join(targets)}, dropout={dropout!r})"
        for (r, s), targets in by_spec.items())
    head = {k: v for k, v in state.items() if k.startswith("classifier.")}
    num_labels, pretrained_head = None, None
    if head:
        out = head.get("classifier.out_proj.weight", head.get("classifier.weight"))
        num_labels, pretrained_head = int(out.shape[0]), False
    elif not cfg.seq2seq and config.get("task_type") == "SEQ_CLS" and not base.has_head:
        raise ExchangeError(f"{folder} adapts a sequence classifier but holds no head weights "
                            "and the base has no head: its logits came from a random head")
    elif not cfg.seq2seq and not base.has_head:
        num_labels = 0
    model = build(base.config, method, num_labels=num_labels, pretrained_head=pretrained_head)

    expected = traverse_util.flatten_dict(shape_tree(model, "delta"))
    flat = {}
    for name, site in found.items():
        flat[site + ("lora_a",)] = state[f"{name}.lora_A.weight"].T
        flat[site + ("lora_b",)] = state[f"{name}.lora_B.weight"].T
    for path in expected:
        if path[0].startswith("classifier"):
            key = hf_key(path, False)
            if key not in head:
                raise ExchangeError(f"{folder}: head weight {key} is missing")
            flat[path] = head[key].T if path[-1] == "kernel" else head[key]
    for path, leaf in expected.items():  # every Δh leaf comes from the file, in shape
        if path not in flat or tuple(flat[path].shape) != tuple(leaf.shape):
            got = tuple(flat[path].shape) if path in flat else "nothing"
            raise ExchangeError(f"{folder}: {'/'.join(path)} needs shape {tuple(leaf.shape)}, "
                                f"the adapter gives {got} (an adapter of another base?)")
    delta = traverse_util.unflatten_dict({p: jnp.asarray(v, jnp.float32)
                                          for p, v in flat.items() if p in expected})
    return model, delta
