"""Element-wise sparse Δh: k trained values at k fixed positions of the frozen weights.

A `sparse(density=..., mask=...)` term trains, for each chosen frozen weight W (any leaf of
`params` read through `frozen_param`), the values v at k fixed flat positions idx:

    W' = W + scatter(idx, v)        (W.reshape(-1).at[idx].add(v).reshape(W.shape))

Both live in the `delta` collection, beside the weight's own path (a weight
`encoder_layer_0/attention/query/kernel` gets `.../query/kernel_sparse` float32 [k] and
`.../query/kernel_sparse_index` int32 [k], sorted and unique). Integer leaves are never
trained (`train.step.split_trainable` keeps them on the frozen side), so the optimiser state
is 2 × k values plus AdamW's counters, not 2 × the dense weights. Shapes must be static for
jit: the mask is resolved (computed or loaded, unified_petl.masks) before the model is built
and the per-leaf counts k travel in the Term (`Term.counts`, ((path, k), ...)); the indices
themselves are filled in by `init_delta(..., masks=...)` (or come from a saved Δh file).
Until then an index leaf holds the out-of-range position `W.size`, which the scatter drops
(mode="drop"): an index that was never filled in can change nothing.

Budget (FISH, Sung et al. 2021; varunnair18/FISH generate_masks.py, create_mask_gradient:
`keep_num = int(all_params_size * keep_ratio) - classifier_size`): with select=global the new
task head is trained and counted inside the budget, k = round(density × (n + h)) - h for n
candidate weights and a new head of h parameters (FISH's int() floors; we round, at most one
value apart); `head_in_budget=false` counts the head apart (k = round(density × n)), as this
project counts a new head for every other method: RoBERTa's two-layer head alone is 0.47% of
roberta-base. select=per_leaf: k = round(density × size) for each candidate leaf, the head
on top.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

VALUES = "_sparse"  # suffix of the trained values [k]
INDEX = "_sparse_index"  # suffix of their flat positions int32 [k]


class SparseError(ValueError):
    """A sparse Δh that does not fit its model or its budget; the message says how to fix it."""


# ----------------------------------------------------------------------------- candidates
def is_candidate(path: str) -> bool:
    """Whether a '/'-joined `params` path can carry a sparse offset: every weight read through
    `frozen_param`, i.e. all but a pretrained task head (read directly, RobertaModel's
    HeadDense) and BART's final_logits_bias (a buffer in the reference code)."""
    return not (path.split("/", 1)[0].startswith("classifier") or path == "final_logits_bias")


def candidates(param_shapes: Mapping[str, tuple], pattern: str = "") -> list[str]:
    """The sorted '/'-joined paths of `param_shapes` a sparse term may touch (pattern: a regex
    the whole path must match; '' = every candidate)."""
    return sorted(p for p in param_shapes
                  if is_candidate(p) and (not pattern or re.fullmatch(pattern, p)))


def flat_shapes(params: Any) -> dict[str, tuple[int, ...]]:
    """'/'-joined path -> shape of every leaf of a params tree (arrays or ShapeDtypeStructs)."""
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def budget(density: float, select: str, sizes: Mapping[str, int], head: int = 0
           ) -> dict[str, int] | int:
    """The number of trained values: an int (select=global: to be spread over the leaves by
    the mask) or {path: k} (per_leaf). sizes: candidate path -> number of weights; head: the
    new task head's parameters, inside the budget with select=global (FISH)."""
    if select == "per_leaf":
        out = {p: int(round(density * n)) for p, n in sizes.items()}
        if not sum(out.values()):
            raise SparseError(f"density={density} rounds to 0 weights in every leaf; raise it "
                              "or use select=global")
        return out
    total = int(round(density * (sum(sizes.values()) + head))) - head
    if total < 1:
        raise SparseError(
            f"density={density} of {sum(sizes.values()) + head:,} weights is "
            f"{int(round(density * (sum(sizes.values()) + head))):,}, no more than the new "
            f"head's {head:,} parameters, which are trained inside the budget (FISH); raise "
            "density or count the head apart with head_in_budget=false")
    return total


# ----------------------------------------------------------------------------- forward
@functools.lru_cache(maxsize=64)
def _count_map(counts: tuple) -> dict[str, int]:
    return {p: int(k) for p, k in counts}


def count_for(method, path: str) -> int:
    """k of the sparse term of `method` at '/'-joined `path` (0: none)."""
    term = method.sparse
    return _count_map(term.counts).get(path, 0) if term is not None else 0


def add_sparse(module, name: str, value: jax.Array, k: int) -> jax.Array:
    """value + scatter(idx, v) for the k values of the weight `name` of `module` (see the
    module docstring). value: the frozen weight, any shape."""
    size = int(np.prod(value.shape))
    values = module.variable("delta", name + VALUES, jnp.zeros, (k,), jnp.float32).value
    index = module.variable("delta", name + INDEX,
                            lambda: jnp.full((k,), size, jnp.int32)).value
    return scatter_add(value, index, values)


def scatter_add(weight: jax.Array, index: jax.Array, values: jax.Array) -> jax.Array:
    """weight with values [k] added at the flat positions index [k] (out-of-range: dropped).

    The sum is taken in the wider of the two dtypes (fp32 for a bf16-stored frozen weight,
    frozen_dtype=bfloat16), as a dense offset `W + Δ` promotes: cast to bf16, an update
    smaller than half a bf16 step of W (2^-9 |W|) would vanish from the forward pass and from
    a merge."""
    dtype = jnp.result_type(weight.dtype, values.dtype)
    flat = weight.reshape(-1).astype(dtype).at[index].add(values.astype(dtype), mode="drop")
    return flat.reshape(weight.shape)


# ----------------------------------------------------------------------------- Δh trees
def is_values(name: str) -> bool:
    return name.endswith(VALUES)


def is_index(name: str) -> bool:
    return name.endswith(INDEX)


def weight_path(delta_path: tuple[str, ...]) -> str:
    """The '/'-joined `params` path a sparse leaf belongs to."""
    name = delta_path[-1]
    for suffix in (INDEX, VALUES):
        if name.endswith(suffix):
            return "/".join(delta_path[:-1] + (name[:-len(suffix)],))
    raise ValueError(f"{'/'.join(delta_path)} is not a sparse leaf")


def with_indices(delta: Any, indices: Mapping[str, np.ndarray],
                 shapes: Optional[Mapping[str, tuple]] = None) -> Any:
    """`delta` with every sparse index leaf set from indices {params path: int [k]}.

    The model's sparse leaves and `indices` must cover the same weights with the same k
    (they come from the same mask); shapes ({params path: shape}) enables range checks.
    """
    flat = traverse_util.flatten_dict(delta)
    slots = {weight_path(p): p for p in flat if is_index(p[-1])}
    given = {p: np.asarray(v) for p, v in indices.items() if np.size(v)}
    if set(slots) != set(given):
        missing, extra = sorted(set(slots) - set(given)), sorted(set(given) - set(slots))
        raise SparseError(f"the mask does not fit the model's sparse term: no indices for "
                          f"{missing[:3]}, indices for weights without a sparse slot "
                          f"{extra[:3]}; resolve the mask for this method and base")
    for path, slot in slots.items():
        idx = given[path]
        if idx.shape != tuple(flat[slot].shape):
            raise SparseError(f"{path}: {idx.size} mask indices for a sparse slot of "
                              f"{flat[slot].shape[0]}; the method's counts come from another "
                              "mask")
        if shapes is not None:
            check_indices(path, idx, int(np.prod(shapes[path])))
        flat[slot] = jnp.asarray(idx, jnp.int32)
    return traverse_util.unflatten_dict(flat)


def check_indices(path: str, index: np.ndarray, size: int) -> None:
    """Sorted, unique, in [0, size): what a resolved mask produces; anything else is refused."""
    index = np.asarray(index)
    if index.size and (index.min() < 0 or index.max() >= size
                       or np.any(np.diff(index.astype(np.int64)) <= 0)):
        raise SparseError(f"{path}: sparse indices must be sorted, unique and in [0, {size}); "
                          "the Δh file or mask is corrupt")


def merge_sparse(method, params: Any, delta: Any):
    """Add every sparse Δh into its frozen weight: W' = W + scatter(idx, v), bitwise equal to
    what the model computes in its forward pass (the same scatter).

    Returns (method without its sparse term, merged params, delta without the sparse leaves).
    Other terms are kept as they are. Like `merge_lora`, one call.
    """
    from unified_petl.delta.spec import Method, SpecError

    if method.sparse is None:
        raise SpecError(f"method {method.name!r} has no sparse term to merge")
    flat_delta = traverse_util.flatten_dict(delta)
    flat_params = dict(traverse_util.flatten_dict(params))
    values = {weight_path(p): v for p, v in flat_delta.items() if is_values(p[-1])}
    index = {weight_path(p): v for p, v in flat_delta.items() if is_index(p[-1])}
    if set(values) != set(index):
        raise SparseError("sparse values and indices do not pair up: "
                          f"{sorted(set(values) ^ set(index))[:3]}")
    for path, v in values.items():
        key = tuple(path.split("/"))
        weight = flat_params[key]
        check_indices(path, np.asarray(index[path]), int(np.prod(weight.shape)))
        flat_params[key] = scatter_add(jnp.asarray(weight), jnp.asarray(index[path]),
                                       jnp.asarray(v))
    rest = {p: v for p, v in flat_delta.items() if not (is_values(p[-1]) or is_index(p[-1]))}
    merged = Method(terms=tuple(t for t in method.terms if t.form != "sparse"),
                    name=method.name, train_head=method.train_head)
    return (merged, traverse_util.unflatten_dict(flat_params),
            traverse_util.unflatten_dict(rest) if rest else {})
