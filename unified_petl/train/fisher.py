"""The empirical Fisher information of every base weight, from per-example gradients.

    F_i = Σ_n (∂ log p(y_n | x_n) / ∂θ_i)²    over the first N training examples

as FISH defines it (Sung, Nair, Raffel, NeurIPS 2021, eq. 2; GitHub varunnair18/FISH,
transformers/examples/text-classification/create_fisher.py, `calculate_the_importance_label`
with grad_type "square"): true labels, dropout off (the model is in eval mode there:
`from_pretrained` returns it so), the training split in order (batch_size=1, shuffle=False),
the new task head at its initial values (the model the fine-tuning starts from).

The reference calls `loss.backward()` once per example WITHOUT zeroing `param.grad` in
between (create_fisher.py at commit c49c265; its later copy in generate_masks.py adds
`model.zero_grad()`), so it squares running sums of gradients, not per-example gradients.
Here every example's gradient is taken alone: `jax.vmap` of `jax.grad` over the examples of
a microbatch, squared and summed inside one jitted program on the trainer's data-parallel
mesh (the microbatch is sharded on `data`, the weights replicated), then summed over the
microbatches. For a sequence-to-sequence task log p(y|x) is the sum over the target tokens.
Filler rows of the last microbatch have weight 0 and add nothing.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from unified_petl.train.step import (data_sharded, global_batch, loss_sums, replicate,
                                     replicated)


def make_fisher_step(model, mesh: Mesh):
    """jitted (params, delta, batch) -> {path: Σ_rows (∂ log p(y|x) / ∂θ)²} for one
    microbatch of rows sharded on `data` (fp32 sums, replicated)."""
    def example_loss(params, delta, example):
        batch = jax.tree.map(lambda x: x[None], example)
        total, _, _ = loss_sums(model, {"params": params, "delta": delta}, batch, None,
                                deterministic=True)
        return total  # weight × NLL = -log p(y|x) for a real row, 0 for a filler row

    def step(params, delta, batch):
        grads = jax.vmap(jax.grad(example_loss), in_axes=(None, None, 0))(params, delta, batch)
        return jax.tree.map(lambda g: jnp.sum(jnp.square(g.astype(jnp.float32)), axis=0), grads)

    repl = replicated(mesh)
    return jax.jit(step, in_shardings=(repl, repl, data_sharded(mesh)), out_shardings=repl)


def fisher_scores(model, params: Any, delta: Any, encoded, mesh: Mesh, *,
                  batch_size: Optional[int] = None, decoder_start_token_id: Optional[int] = None,
                  buckets: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
    """{'/'-joined params path: float32 F [leaf shape]} over every example of `encoded` (pass
    the first N training examples), in dataset order.

    model: the base model with its task head (method "none"); params: its frozen tree;
    delta: the new head's initial values ({} without one). batch_size: examples per
    microbatch (default: 8 rounded up to a multiple of the devices); per-example gradients
    of every weight exist for one microbatch at a time.
    """
    from unified_petl.data import eval_batches

    per = max(1, -(-(batch_size or 8) // mesh.size))
    rows = per * mesh.size
    step = make_fisher_step(model, mesh)
    params, delta = replicate(params, mesh), replicate(delta, mesh)
    total = None
    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,))
    for local in eval_batches(encoded, batch_size=rows,
                              decoder_start_token_id=decoder_start_token_id, buckets=buckets,
                              process_index=jax.process_index(),
                              process_count=jax.process_count()):
        sums = step(params, delta, global_batch(local, mesh))
        total = sums if total is None else add(total, sums)
    if total is None:
        raise ValueError("no training examples for the Fisher information")
    return {k: np.asarray(v) for k, v in
            traverse_util.flatten_dict(jax.device_get(total), sep="/").items()}
