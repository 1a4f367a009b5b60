"""LoRA: y = W x + b + (α/r) · B A drop(x), and merging it into the frozen weights.

A ~ kaiming-uniform(a=√5), i.e. U(±1/√d_in); B = 0, so the model starts as the base model.
In our [d_in, d_out] kernel layout, A is `lora_a` [d_in, r] and B is `lora_b` [r, d_out].
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from unified_petl.delta.spec import Method, SpecError
from unified_petl.delta.variables import delta_param, torch_linear_init, zeros


def lora_delta(module: nn.Module, term, x: jax.Array, features: int, deterministic: bool,
               dtype=jnp.float32) -> jax.Array:
    """(α/r) · drop(x) A B for x [..., d_in] -> [..., features]; variables live in `module`."""
    d_in = x.shape[-1]
    a = delta_param(module, "lora_a", torch_linear_init(d_in), (d_in, term.size))
    b = delta_param(module, "lora_b", zeros, (term.size, features))
    x = nn.Dropout(term.dropout)(x, deterministic=deterministic)
    return term.scale * ((x.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype))


def _lora_sites(delta: Any):
    flat = traverse_util.flatten_dict(delta)
    return sorted({path[:-1] for path in flat if path[-1] == "lora_a"}), flat


def _terms_without_lora(method: Method) -> Method:
    terms = tuple(t for t in method.terms if t.form != "lora")
    return Method(terms=terms, name=f"{method.name}[lora merged]", train_head=method.train_head)


def merge_lora(method: Method, params: Any, delta: Any):
    """Fold every LoRA product into its frozen kernel: W' = W + (α/r) A B (exact in fp32).

    Returns (method without its LoRA terms, merged params, delta without lora_a / lora_b).
    Other terms are kept as they are. Refused with a clear message for a method without LoRA:
    adapters and prefixes are non-linear in h and cannot be folded into a weight.
    """
    lora_terms = method.of("lora")
    if not lora_terms:
        raise SpecError(f"method {method.name!r} has no LoRA term: only the linear LoRA form "
                        "can be merged into the frozen weights (adapters and prefixes are "
                        "non-linear in h)")
    sites, flat_delta = _lora_sites(delta)
    flat_params = dict(traverse_util.flatten_dict(params))
    for site in sites:
        target = _target_of(site, method)
        a, b = flat_delta.pop(site + ("lora_a",)), flat_delta.pop(site + ("lora_b",))
        flat_params[site + ("kernel",)] = flat_params[site + ("kernel",)] + target.scale * (a @ b)
    return (_terms_without_lora(method), traverse_util.unflatten_dict(flat_params),
            traverse_util.unflatten_dict(flat_delta) if flat_delta else {})


def unmerge_lora(method: Method, params: Any, delta: Any):
    """Undo `merge_lora`: W = W' - (α/r) A B, with `method` the original (LoRA) method and
    `delta` holding the LoRA factors. Returns the frozen tree as it was before merging."""
    sites, flat_delta = _lora_sites(delta)
    if not sites:
        raise SpecError("unmerge needs the LoRA factors (lora_a, lora_b) in the delta tree")
    flat_params = dict(traverse_util.flatten_dict(params))
    for site in sites:
        ab = flat_delta[site + ("lora_a",)] @ flat_delta[site + ("lora_b",)]
        flat_params[site + ("kernel",)] = (flat_params[site + ("kernel",)]
                                           - _target_of(site, method).scale * ab)
    return traverse_util.unflatten_dict(flat_params)


def _target_of(site: tuple, method: Method):
    from unified_petl.models.layers import LORA_NAMES  # model-side projection names

    name = site[-1]
    for target, names in LORA_NAMES.items():
        if name in names:
            term = method.lora_for(target)
            if term is not None:
                return term
    raise SpecError(f"LoRA variables at {'/'.join(site)} do not belong to a LoRA term of "
                    f"{method.name!r}")
