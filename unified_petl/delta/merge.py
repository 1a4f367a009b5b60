"""Folding the linear Δh terms into the frozen weights, exactly (fp32).

    LoRA / rsLoRA:  W' = W + s·A B                                   (s = α/r or α/√r)
    DoRA:           W' = (m / ||W + s·A B||) ⊙ (W + s·A B)           (per output column)
    IA3, output:    W'[:, j] = l_j W[:, j],  b' = l ⊙ b
    IA3, input:     W'[i, :] = l_i W[i, :]

(kernel layout [d_in, d_out]). A merged model computes what the unmerged one computes at the
cost of the base model alone. What cannot be folded is kept as it is: adapters, prefixes,
prompts (non-linear in h) and gated LoRA (its gate depends on the input). DoRA and IA3 at a
projection whose kernel or bias also carries a masked or sparse offset (BitFit, `masked`,
`sparse`) are refused: the offset is added to the frozen weight at run time, after the fold,
which would change the function.
"""
from __future__ import annotations

from typing import Any

from flax import traverse_util

from unified_petl.delta import ia3
from unified_petl.delta.dora import weight_norm
from unified_petl.delta.spec import Method, SpecError, Term

LEAVES = {"lora": ("lora_a", "lora_b", "lora_magnitude"), "ia3": ("ia3_l",)}


def merge(method: Method, params: Any, delta: Any):
    """Fold every mergeable term (LoRA, rsLoRA, DoRA, IA3) into `params`.

    Returns (method without the folded terms, merged params, the Δh left: the other terms'
    variables, {} when nothing is left). Refused with one line when nothing can be folded.
    """
    return _merge(method, params, delta, forms=("lora", "ia3"))


def merge_lora(method: Method, params: Any, delta: Any):
    """`merge` for the LoRA terms only (plain, rsLoRA, DoRA): W' = W + (α/r) A B, ..."""
    return _merge(method, params, delta, forms=("lora",))


def _mergeable(term: Term, forms) -> bool:
    return term.form in forms and not term.learn_gate


def _merge(method: Method, params: Any, delta: Any, forms):
    folded = tuple(t for t in method.terms if _mergeable(t, forms))
    if not folded:
        what = "LoRA" if forms == ("lora",) else "LoRA, rsLoRA, DoRA or IA3"
        gated = [t.form for t in method.terms if t.form in forms and t.learn_gate]
        why = (f"its {'/'.join(gated)} term has a learned gate that depends on the input"
               if gated else "adapters, prefixes and prompts are non-linear in h")
        raise SpecError(f"method {method.name!r} has no {what} term that can be folded into "
                        f"the frozen weights: {why}")
    from unified_petl.models.layers import projection_target  # model-side names

    flat_delta = dict(traverse_util.flatten_dict(delta))
    flat_params = dict(traverse_util.flatten_dict(params))
    sites = sorted({p[:-1] for p in flat_delta if p[-1] in ("lora_a", "ia3_l")})
    for site in sites:
        target = projection_target(site)
        term = (method.lora_for(target) or method.ia3_for(target)) if target else None
        if term is None:
            raise SpecError(f"Δh variables at {'/'.join(site)} belong to no LoRA or IA3 term "
                            f"of {method.name!r}")
        if term not in folded:
            continue
        kernel_path, bias_path = site + ("kernel",), site + ("bias",)
        offsets = (kernel_path, bias_path, site + ("kernel_sparse",), site + ("bias_sparse",))
        if (term.dora or term.form == "ia3") and any(p in flat_delta for p in offsets):
            raise SpecError(f"{'/'.join(site)} has a masked or sparse offset under a "
                            f"{'DoRA' if term.dora else 'IA3'} term; fold the offsets into the "
                            "frozen weights first (params + offset, up.merge_sparse), then "
                            "merge")
        kernel = flat_params[kernel_path]
        if term.form == "ia3":
            l = flat_delta.pop(site + ("ia3_l",))
            on_input = target in term.input_targets
            flat_params[kernel_path], bias = ia3.fold(kernel, flat_params.get(bias_path), l,
                                                      on_input)
            if bias is not None:
                flat_params[bias_path] = bias
            continue
        a, b = flat_delta.pop(site + ("lora_a",)), flat_delta.pop(site + ("lora_b",))
        merged = kernel + term.scale * (a @ b)
        if term.dora:
            m = flat_delta.pop(site + ("lora_magnitude",))
            merged = merged * (m / weight_norm(kernel, a, b, term.scale))[None, :]
        flat_params[kernel_path] = merged
    kept = tuple(t for t in method.terms if t not in folded)
    label = "lora merged" if forms == ("lora",) else "merged"
    merged_method = Method(terms=kept, name=f"{method.name}[{label}]",
                           train_head=method.train_head)
    return (merged_method, traverse_util.unflatten_dict(flat_params),
            traverse_util.unflatten_dict(flat_delta) if flat_delta else {})


def unmerge_lora(method: Method, params: Any, delta: Any):
    """Undo `merge_lora` for plain LoRA / rsLoRA: W = W' - s·A B, with `method` the original
    method and `delta` holding the factors. Returns the frozen tree as it was before merging.
    DoRA is refused (W' keeps only the direction of W + s·A B; its norm, hence W, is lost)."""
    from unified_petl.models.layers import projection_target

    if any(t.dora for t in method.of("lora")):
        raise SpecError("a DoRA merge cannot be undone: the merged weight keeps only the "
                        "direction of W + s·BA; keep the base params instead")
    flat_delta = traverse_util.flatten_dict(delta)
    sites = sorted({p[:-1] for p in flat_delta if p[-1] == "lora_a"})
    if not sites:
        raise SpecError("unmerge needs the LoRA factors (lora_a, lora_b) in the delta tree")
    flat_params = dict(traverse_util.flatten_dict(params))
    for site in sites:
        target = projection_target(site)
        term = method.lora_for(target) if target else None
        if term is None:
            raise SpecError(f"LoRA variables at {'/'.join(site)} do not belong to a LoRA term "
                            f"of {method.name!r}")
        if term.learn_gate:  # never merged
            continue
        ab = flat_delta[site + ("lora_a",)] @ flat_delta[site + ("lora_b",)]
        flat_params[site + ("kernel",)] = flat_params[site + ("kernel",)] - term.scale * ab
    return traverse_util.unflatten_dict(flat_params)
