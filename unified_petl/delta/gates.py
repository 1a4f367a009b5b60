"""Learned gates (UniPELT, Mao et al., ACL 2022): G = σ(z W_g + b_g) scales a term's Δh.

A gate is a composition option of any additive term (`Term.learn_gate`): the term reads z, the
gate reads the same z and returns one number per position, G [..., 1] in (0, 1):

    LoRA:    y = W x + b + G(x) · s · B A drop(x)          (z = the projection's input x)
    adapter: h <- h + G(z) · Adapter(z)                     (z = x parallel, h sequential)
    MH PA:   heads <- heads + G(x) · Δ_heads                (z = the attention's input x)
    prefix:  P_k, P_v <- G(x_t) · P_k, G(x_t) · P_v         (z = x_t, the query's input)

as the authors' code places them (morningmoni/UniPELT: lora_layers.py LoRA_Linear.forward,
`self.lora_gate(x)` replacing the scaling α/r; transformers/adapters/modeling.py
Adapter.forward, `output = up * sigmoid(self.gate(x))` on the adapter's input x;
transformers/models/bert/modeling_bert.py BertSelfAttention.forward, prefix_embed_k and
prefix_embed_v multiplied by `sigmoid(self.prefix_gate(hidden_states))`). Each gate is a
Linear(d, 1) initialised as transformers initialises every nn.Linear of the model (BertModel
init_weights: N(0, 0.02), bias 0; the adapter's own init_bert_weights is the same), so every
gate starts near 0.5.

One difference from that code, on purpose: the authors average σ(W_g x) over the sequence
(`torch.mean(gate, dim=1)`, padding included) to get one gate per example. We keep the
paper's per-position G = σ(W_g x): an average over positions would let a decoder position see
the tokens after it (BART's causal self-attention), make the gate change with the padding of
the batch, and differ between teacher forcing and step-by-step generation.

Variables (in the `delta` collection of the module that owns the term): `<name>_kernel`
[d, 1] and `<name>_bias` [1]; names: `lora_gate` (Dense), `gate` (Adapter,
MultiHeadAdapter), `prefix_gate` (Attention). An exporter maps `<name>_kernel` to a PyTorch
Linear(d, 1) weight by transposing it.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_petl.delta.variables import delta_param, normal, zeros


def learned_gate(module: nn.Module, name: str, z: jax.Array, dtype=jnp.float32) -> jax.Array:
    """G = σ(z W_g + b_g): z [..., d] -> [..., 1], computed in fp32 (a sigmoid near 0 or 1 is
    where bf16 loses most)."""
    d = z.shape[-1]
    kernel = delta_param(module, f"{name}_kernel", normal(0.02), (d, 1))
    bias = delta_param(module, f"{name}_bias", zeros, (1,))
    return jax.nn.sigmoid(z.astype(jnp.float32) @ kernel + bias).astype(dtype)
