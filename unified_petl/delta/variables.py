"""How Δh variables are created and how frozen weights pick up masked offsets.

Two collections (DESIGN.md decision 1): `params` holds the frozen pretrained weights, `delta`
holds Δh. A Δh module calls `delta_param`; a base-model module reads each frozen weight through
`frozen_param`, which adds a zero-initialised offset from `delta` when the weight's path matches
a `masked(pattern=...)` term (BitFit is `masked('.*bias')`), k values at fixed positions for a
`sparse(...)` term (unified_petl.delta.sparse) and gated differences for diff pruning
(unified_petl.delta.diff_pruning).
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def delta_param(module: nn.Module, name: str, init_fn: Callable, shape: Sequence[int],
                dtype=jnp.float32) -> jax.Array:
    """A trainable Δh variable in the `delta` collection (init uses the 'params' rng)."""
    var = module.variable("delta", name, lambda: init_fn(module.make_rng("params"), tuple(shape),
                                                         dtype))
    return var.value


def param_path(module: nn.Module, name: str) -> str:
    return "/".join(tuple(module.scope.path) + (name,))


def frozen_param(module: nn.Module, name: str, init_fn: Callable, shape: Sequence[int],
                 patterns: Sequence[str] = ()) -> jax.Array:
    """A frozen weight from `params`, plus a Δh offset from `delta` when its path is masked in.

    The element-wise terms of the module's method (`module.method`) apply here too: a sparse
    term adds its k values (W + scatter(idx, v)), diff pruning its gated difference z ⊙ w.
    """
    value = module.param(name, init_fn, tuple(shape), jnp.float32)
    if patterns and any(re.fullmatch(p, param_path(module, name)) for p in patterns):
        value = value + module.variable("delta", name, jnp.zeros, tuple(shape), jnp.float32).value
    method = getattr(module, "method", None)
    if method is not None and (method.sparse is not None or method.diff is not None):
        value = _elementwise(module, name, value, method)
    return value


def _elementwise(module: nn.Module, name: str, value: jax.Array, method) -> jax.Array:
    from unified_petl.delta import diff_pruning, sparse  # they import nothing from here

    path = param_path(module, name)
    k = sparse.count_for(method, path)
    if k:
        value = sparse.add_sparse(module, name, value, k)
    term = method.diff
    if term is not None and sparse.is_candidate(path) and (
            not term.pattern or re.fullmatch(term.pattern, path)):
        value = diff_pruning.add_gated(module, name, value, term)
    return value


# PyTorch-default initialisers (REFERENCE.md: Flax defaults differ; use these explicitly).

def torch_linear_init(fan_in: int) -> Callable:
    """nn.Linear default / kaiming_uniform(a=√5): U(±1/√fan_in), for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                    bound)


def normal(std: float) -> Callable:
    return lambda key, shape, dtype=jnp.float32: std * jax.random.normal(key, shape, dtype)


def constant(value: float) -> Callable:
    return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


zeros = constant(0.0)
ones = constant(1.0)
