"""Δh <-> Hugging Face PEFT adapter folders (adapter_config.json + adapter_model.safetensors).

Export (`write`): LoRA (rsLoRA, DoRA) or IA3 terms, for
`peft.PeftModel.from_pretrained(transformers_model, DIR)`; a new task head travels as
`modules_to_save` (PEFT's layout for SEQ_CLS: base_model.model.classifier.*).
- LoRA: PEFT computes y = W x + b + s·B A drop(x) (peft/tuners/lora/layer.py Linear.forward),
  ours s·drop(x) A B in [d_in, d_out] layout: lora_A.weight = Aᵀ [r, d_in], lora_B.weight =
  Bᵀ [d_out, r], lora_alpha = s·r (s·√r with use_rslora, our rslora=true). Terms with other
  r or alpha: rank_pattern / alpha_pattern.
- DoRA: use_dora=True, our lora_magnitude [d_out] as `lora_magnitude_vector`
  (peft/tuners/lora/dora.py; `unified_petl.delta.dora`).
- IA3: peft_type IA3, our `ia3_l` as `ia3_l` [d_out, 1] (output targets) or [1, d_in] (the
  input targets, PEFT's feedforward_modules; peft/tuners/ia3/layer.py).
PEFT holds one tuner type per folder: LoRA with IA3, DoRA with plain LoRA are refused.

Refused, each with one line (PEFT cannot hold the term, and dropping it would change the
function):
- prefix tuning. PEFT 0.21 + transformers 5 give (m)BART decoder self-attention prefixes
  only (peft_model.py get_prompt: the cross-attention cache is replaced by an empty
  DynamicCache) and shift the decoder positions by l (modeling_bart.py BartDecoder.forward:
  position_ids = arange(T) + cache_length); we prefix the encoder, the decoder and the
  cross-attention and keep the positions (REFERENCE.md). On RoBERTa, PEFT's prefix tuning of
  a classifier raises "Model does not support past key values" (the model's keyword is
  `cache` now) and would shift the positions by l as well (RobertaEmbeddings cache_length).
- learned gates (learn_gate, unipelt): PEFT has no gated LoRA.
- adapters, the multi-head adapter, prompts, masked offsets (BitFit), full fine-tuning: PEFT
  has no such tuner with our placement.

Import (`read`): a PEFT LORA (plain, rsLoRA, DoRA) or IA3 folder -> (model, Δh) with a
`lora(...)` / `ia3(...)` method, exact. A PEFT adapter that does not adapt every projection
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


def _target_of(site: tuple[str, ...]) -> str:
    from unified_petl.models.layers import projection_target

    return projection_target(site)


def _check_terms(ex: Export) -> str:
    """'LORA' or 'IA3': the PEFT tuner that holds the method; else one-line refusals."""
    fmt = "PEFT"
    for term in ex.method.terms:
        if term.learn_gate:
            raise ex.refuse(fmt, f"PEFT has no learned gate (learn_gate, unipelt) on "
                            f"{term.form} ({term.short()})")
    for term in ex.method.terms:
        if term.form == "prefix":
            raise ex.refuse(fmt, "PEFT's prefix tuning holds (m)BART decoder self-attention "
                            "prefixes only and shifts positions by l (RoBERTa: it does not run "
                            "on transformers 5), while this prefix also sits in the encoder and "
                            "cross-attention; use --format adapters")
        if term.form not in ("lora", "ia3"):
            what = {"adapter": "bottleneck adapters" if term.at != "heads"
                    else "the multi-head adapter", "prompt": "prompt tuning",
                    "masked": "masked offsets (BitFit)"}.get(term.form, term.form)
            raise ex.refuse(fmt, f"PEFT has no counterpart of {what} ({term.short()}); "
                            "export LoRA and IA3 to PEFT, adapters and prefixes with "
                            "--format adapters")
    lora, ia3 = ex.method.of("lora"), ex.method.of("ia3")
    if lora and ia3:
        raise ex.refuse(fmt, "a PEFT folder holds one tuner type, and this method has LoRA and "
                        "IA3 terms")
    if not lora and not ia3:
        raise ex.refuse(fmt, "the method has no LoRA or IA3 term to export")
    if len({t.dora for t in lora}) > 1:
        raise ex.refuse(fmt, "PEFT's use_dora holds for the whole adapter, and this method "
                        "mixes DoRA and plain LoRA terms")
    if len({t.dropout for t in lora}) > 1:
        raise ex.refuse(fmt, "its LoRA terms have different dropouts; PEFT has one "
                        "lora_dropout per adapter")
    return "LORA" if lora else "IA3"


def _common_config(ex: Export, kind: str) -> dict:
    return {"peft_type": kind, "task_type": _task_type(ex), "peft_version": PEFT_LAYOUT,
            "base_model_name_or_path": ex.base_name, "revision": None, "inference_mode": True,
            "fan_in_fan_out": False,
            "modules_to_save": ["classifier"] if ex.new_head else None}


def _lora_config(ex: Export, tensors: dict) -> dict:
    by_term = defaultdict(list)
    for site in sites(ex.delta, "lora_a"):
        name = ex.module(site)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = ex.delta[site + ("lora_a",)].T
        tensors[f"{PREFIX}{name}.lora_B.weight"] = ex.delta[site + ("lora_b",)].T
        if site + ("lora_magnitude",) in ex.delta:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = ex.delta[site + ("lora_magnitude",)]
        by_term[ex.method.lora_for(_target_of(site))].append(name)
    terms = ex.method.of("lora")
    rslora = all(t.rslora for t in terms)  # else every alpha as s·r: the same function
    alpha = lambda t: t.scale * (math.sqrt(t.size) if rslora else t.size)  # noqa: E731
    first = terms[0]
    config = {**_common_config(ex, "LORA"), "r": first.size, "lora_alpha": alpha(first),
              "lora_dropout": float(first.dropout), "use_rslora": rslora,
              "use_dora": first.dora, "bias": "none", "init_lora_weights": True,
              "target_modules": _target_pattern([n for ns in by_term.values() for n in ns]),
              "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
              "layers_pattern": None}
    for term, names in by_term.items():
        if (term.size, alpha(term)) != (first.size, alpha(first)):
            pattern = _target_pattern(names)
            config["rank_pattern"][pattern] = term.size
            config["alpha_pattern"][pattern] = alpha(term)
    return config


def _ia3_config(ex: Export, tensors: dict) -> dict:
    names, inputs = [], []
    for site in sites(ex.delta, "ia3_l"):
        name, l = ex.module(site), ex.delta[site + ("ia3_l",)]
        on_input = _target_of(site) in ex.method.ia3_for(_target_of(site)).input_targets
        tensors[f"{PREFIX}{name}.ia3_l"] = l[None, :] if on_input else l[:, None]
        names.append(name)
        if on_input:
            inputs.append(name)
    return {**_common_config(ex, "IA3"), "target_modules": _target_pattern(names),
            "feedforward_modules": _target_pattern(inputs) if inputs else None,
            "init_ia3_weights": True}


def write(ex: Export, out_dir: str) -> list[str]:
    """Write `ex` as a PEFT LoRA / IA3 adapter into the (new, empty) folder `out_dir`."""
    from safetensors.numpy import save_file

    kind = _check_terms(ex)
    tensors: dict[str, np.ndarray] = {}
    config = _lora_config(ex, tensors) if kind == "LORA" else _ia3_config(ex, tensors)
    for key, value in ex.head_tensors().items():
        tensors[PREFIX + key] = value
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
    return [CONFIG, WEIGHTS]


# ---------------------------------------------------------------------------------- import
# adapter_config.json keys that change what the adapter computes in ways our terms cannot
# hold: each must be absent or falsy ("none" for bias).
UNSUPPORTED = ("fan_in_fan_out", "layer_replication", "target_parameters",
               "trainable_token_indices", "lora_bias", "use_qalora", "use_bdlora",
               "alora_invocation_tokens", "megatron_config")
LEAVES = {"LORA": (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"),
          "IA3": (".ia3_l",)}


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


def _alpha_of(config: dict, name: str) -> float:
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return float(value)
    return float(config.get("lora_alpha", 8))


def _check_config(folder: str, config: dict) -> str:
    kind = config.get("peft_type")
    if kind not in LEAVES:
        raise ExchangeError(f"{folder} holds a PEFT {kind} adapter; import_delta reads LORA "
                            "(plain, rsLoRA, DoRA) and IA3 adapters")
    for key in UNSUPPORTED:
        if config.get(key):
            raise ExchangeError(f"{folder}: PEFT option {key}={config[key]!r} has no "
                                "counterpart in unified-petl; import adapters without it")
    if config.get("bias", "none") != "none":
        raise ExchangeError(f"{folder}: bias={config['bias']!r} trains biases besides LoRA; "
                            "import_delta reads adapters with bias='none'")
    extra = [m for m in (config.get("modules_to_save") or []) if m not in ("classifier", "score")]
    if extra:
        raise ExchangeError(f"{folder}: modules_to_save {extra} (whole trained modules) have "
                            "no place in a Δh; only a classification head does")
    return kind


def read(folder: str, base) -> tuple[Any, dict]:
    """A PEFT LoRA / IA3 folder -> (model built on base.config with its method, Δh tree)."""
    from unified_petl.models.config import arch_config
    from unified_petl.models.loading import _strip_body_prefix

    with open(os.path.join(folder, CONFIG)) as f:
        config = json.load(f)
    kind = _check_config(folder, config)
    cfg = arch_config(base.config)
    raw = {k.removeprefix(PREFIX): v for k, v in read_weights(folder).items()}
    state = {_strip_body_prefix(k): v for k, v in raw.items()}
    # PEFT matches rank / alpha patterns against the module names in its model (with the body)
    full_name = {_strip_body_prefix(k): k for k in raw}
    odd = sorted(k for k in state if not k.startswith("classifier.")
                 and not k.endswith(LEAVES[kind]))
    if odd:
        raise ExchangeError(f"{folder}: weights {odd[:3]} are not {kind} weights of a linear "
                            "layer (embedding LoRA ...); import_delta reads linear layers")
    leaf = LEAVES[kind][0]
    found = _sites(folder, cfg, base, [k[:-len(leaf)] for k in state if k.endswith(leaf)])
    if kind == "LORA":
        method, flat = _lora(folder, config, state, found, full_name)
    else:
        method, flat = _ia3(folder, state, found)
    return _build(folder, config, base, cfg, method, flat, state)


def _sites(folder: str, cfg, base, names: list[str]) -> dict[str, tuple]:
    """{transformers module name: our module path} for the adapted modules; refuses a module
    our terms cannot reach and a target not adapted at every one of its projections."""
    from flax import traverse_util

    from unified_petl.build import build, shape_tree

    probe = build(base.config, f"lora(r=1, at={'+'.join(LORA_TARGETS)})",
                  num_labels=0 if not cfg.seq2seq else None, pretrained_head=False)
    every = {module_name(site, cfg.seq2seq): site
             for site in sites(traverse_util.flatten_dict(shape_tree(probe, "delta")), "lora_a")}
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ExchangeError(f"{folder}: adapts {unknown[:3]}, which unified-petl's terms "
                            f"cannot target on this {cfg.kind} base (targets: "
                            f"{', '.join(LORA_TARGETS)})")
    if not names:
        raise ExchangeError(f"{folder} holds no adapter weights")
    found = {n: every[n] for n in names}
    for target in {_target_of(s) for s in found.values()}:
        have = sum(_target_of(s) == target for s in found.values())
        total = sum(_target_of(s) == target for s in every.values())
        if have != total:
            raise ExchangeError(f"{folder}: adapts {have} of the {total} {target} projections "
                                "(layers_to_transform or a narrower target_modules); a "
                                "unified-petl term covers every one")
    return found


def _by_target(folder: str, found: dict, spec_of) -> dict:
    """{spec: [targets]} with one spec per target (refused when a target's sites differ)."""
    specs: dict[str, Any] = {}
    for name, site in found.items():
        target, spec = _target_of(site), spec_of(name)
        if specs.setdefault(target, spec) != spec:
            raise ExchangeError(f"{folder}: the {target} projections are adapted differently "
                                f"({specs[target]} and {spec}); a unified-petl term has one "
                                "setting per target")
    grouped = defaultdict(list)
    for target in LORA_TARGETS:  # a canonical order
        if target in specs:
            grouped[specs[target]].append(target)
    return grouped


def _lora(folder, config, state, found, full_name):
    rslora, dora = bool(config.get("use_rslora")), bool(config.get("use_dora"))
    dropout = float(config.get("lora_dropout", 0.0) or 0.0)

    def spec_of(name):
        r = int(state[f"{name}.lora_A.weight"].shape[0])
        return r, _alpha_of(config, full_name[f"{name}.lora_A.weight"][:-len(".lora_A.weight")])

    options = (", rslora=true" if rslora else "") + (", dora=true" if dora else "")
    method = "+".join(f"lora(r={r}, alpha={alpha!r}, at={'+'.join(targets)}, "
                      f"dropout={dropout!r}{options})"
                      for (r, alpha), targets in _by_target(folder, found, spec_of).items())
    flat = {}
    for name, site in found.items():
        flat[site + ("lora_a",)] = state[f"{name}.lora_A.weight"].T
        flat[site + ("lora_b",)] = state[f"{name}.lora_B.weight"].T
        if dora:
            key = f"{name}.lora_magnitude_vector"
            if key not in state:
                raise ExchangeError(f"{folder}: use_dora=true but {key} is missing")
            flat[site + ("lora_magnitude",)] = state[key]
    return method, flat


def _ia3(folder, state, found):
    def spec_of(name):  # [1, d_in]: the input is scaled (feedforward); [d_out, 1]: the output
        return state[f"{name}.ia3_l"].shape[0] == 1 and state[f"{name}.ia3_l"].ndim == 2

    grouped = _by_target(folder, found, spec_of)
    targets = [t for t in LORA_TARGETS if any(t in ts for ts in grouped.values())]
    inputs = grouped.get(True, [])
    method = f"ia3(at={'+'.join(targets)}, inputs={'+'.join(inputs) or 'none'})"
    flat = {site + ("ia3_l",): state[f"{name}.ia3_l"].reshape(-1) for name, site in found.items()}
    return method, flat


def _build(folder, config, base, cfg, method: str, flat: dict, state: dict):
    """The model of `method` with the head the folder holds (or the base's), and its Δh tree
    from `flat` plus the head; every Δh leaf must come from the folder, in shape."""
    import jax.numpy as jnp
    from flax import traverse_util

    from unified_petl.build import build, shape_tree
    from unified_petl.models.loading import hf_key

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
