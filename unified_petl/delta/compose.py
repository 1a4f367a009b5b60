"""Composition functions: how a Δh term is combined with the representation h it modifies.

The paper's fourth axis. Adapters and LoRA use `add` / `scaled` (the scale s is applied inside
the term, so both reduce to `h + Δh` here); prefix tuning is `gated` (eq. 5-7), computed either
by concatenating prefixes to K/V or explicitly in `unified_petl.delta.prefix`. Beyond the
paper: IA3 composes by `multiply` (h <- l ⊙ h), and any additive term may carry a learned,
input-dependent gate (UniPELT, `unified_petl.delta.gates`): h <- h + G(z)·Δh.
"""
from __future__ import annotations

import jax


def add(h: jax.Array, delta: jax.Array) -> jax.Array:
    """h <- h + Δh."""
    return h + delta


def scaled(h: jax.Array, delta: jax.Array, s) -> jax.Array:
    """h <- h + s·Δh (LoRA-style scaling; s fixed or a learnt scalar)."""
    return h + s * delta


def gated(h: jax.Array, delta: jax.Array, lam: jax.Array) -> jax.Array:
    """h <- (1 - λ)·h + λ·Δh, λ broadcast over the feature axis (prefix softmax mass)."""
    return (1.0 - lam) * h + lam * delta


def multiply(h: jax.Array, l: jax.Array) -> jax.Array:
    """h <- l ⊙ h, l broadcast over the leading axes (IA3)."""
    return h * l
