"""How Δh variables are created and how frozen weights pick up masked offsets.

Two collections (DESIGN.md decision 1): `params` holds the frozen pretrained weights, `delta`
holds Δh. A Δh module calls `delta_param`; a base-model module reads each frozen weight through
`frozen_param`, which adds a zero-initialised offset from `delta` when the weight's path matches
a `masked(pattern=...)` term (BitFit is `masked('.*bias')`).
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
    """A frozen weight from `params`, plus a Δh offset from `delta` when its path is masked in."""
    value = module.param(name, init_fn, tuple(shape), jnp.float32)
    if patterns and any(re.fullmatch(p, param_path(module, name)) for p in patterns):
        value = value + module.variable("delta", name, jnp.zeros, tuple(shape), jnp.float32).value
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
