"""Child-Tuning (Xu et al., EMNLP 2021): full fine-tuning whose gradients are masked in the
optimiser, as an optax gradient transformation placed between clipping and AdamW.

    child_tuning(mode=F, p=0.3)   Child-Tuning_F: every step a fresh Bernoulli(p) mask per
                                  weight, kept gradients rescaled by 1/p (unbiased);
    child_tuning(mode=D, p=0.3)   Child-Tuning_D: a fixed mask, the top p of the Fisher
                                  information of the encoder/decoder layers' weights.

What the authors' code does (GitHub alibaba/AliceMind, ChildTuning/ChildTuningOptimizer.py,
`ChildTuningAdamW.step`), and what we do the same:
- the mask multiplies the gradient before it enters Adam's moments ("HACK BEGIN": `grad *=
  mask` for D, `grad *= Bernoulli(p).sample() / p` for F), so at a masked position the
  moments decay (m <- β1 m, v <- β2 v) and the weight still moves by the update those
  decayed moments give: momentum is not masked;
- weight decay is decoupled and applied to every weight, masked or not (`p.data.add_(p.data,
  alpha=-lr * weight_decay)` after the Adam step, with the usual no-decay groups: biases and
  LayerNorm weights; ours: `optim.decay_mask`, ndim >= 2). The authors decay the weight
  after the Adam update (lr·wd·(p - step)), optax before it (lr·wd·p): a difference of
  order lr² · wd;
- the gradient is clipped before it is masked (transformers' Trainer clips the full gradient,
  then calls optimizer.step; ChildTuningD.py, the training loop);
- F masks every parameter, the new classifier included (the optimiser sees all of them);
  D masks only the parameters whose name contains 'layer' (ChildTuningD.calculate_fisher)
  and does not rescale: the embeddings, the pooler and the head always get their gradient.
- D's Fisher information: the authors sum squared per-BATCH gradients (train batch size,
  dropout on: `model.train()`, each parameter's gradient clipped to max_grad_norm first)
  over the whole shuffled training set and keep F >= the (1-p) percentile. Ours is FISH's
  per-example Fisher over the first `num_examples` training examples, dropout off
  (unified_petl.train.fisher), and the top p of those weights (ties to the lower position).
The F mask of step s is drawn from fold_in(fold_in(key(seed), s), MASK_STREAM), the step's own
key (train.step), so a resumed run draws exactly the masks of an uninterrupted one.
"""
from __future__ import annotations

import re
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def mask_gradients(term) -> optax.GradientTransformationExtraArgs:
    """The gradient mask of a Child-Tuning term (Term(form="full", mask="bernoulli"|"fisher",
    density=p)). Extra arguments of `update`: mask_key (F: a PRNG key), grad_mask (D:
    {'/'-joined path of the trainable tree: bool}, from SparseMask.grad_mask())."""
    p = float(term.density)
    bernoulli = term.mask == "bernoulli"
    pattern = term.pattern

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, mask_key=None, grad_mask=None, **extra):
        del params, extra
        flat = traverse_util.flatten_dict(updates, sep="/")
        if bernoulli:
            if mask_key is None:
                raise ValueError("Child-Tuning_F needs mask_key= (the train step passes it)")
            out = {}
            for i, (path, g) in enumerate(sorted(flat.items())):
                if pattern and not re.fullmatch(pattern, path):
                    out[path] = g
                    continue
                keep = jax.random.bernoulli(jax.random.fold_in(mask_key, i), p, g.shape)
                out[path] = jnp.where(keep, g / p, jnp.zeros_like(g))
        else:
            if grad_mask is None:
                raise ValueError("Child-Tuning_D needs grad_mask= (frozen['grad_mask'] in "
                                 "the train step)")
            unknown = sorted(set(grad_mask) - set(flat))
            if unknown:
                raise ValueError(f"gradient mask for {unknown[:3]}, which are not trained")
            out = {path: (g * grad_mask[path].astype(g.dtype) if path in grad_mask else g)
                   for path, g in flat.items()}
        return traverse_util.unflatten_dict(out, sep="/"), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def needs_fisher_mask(method) -> Optional[object]:
    """The Child-Tuning_D term of `method` (it needs a Fisher mask), else None."""
    term = method.grad_mask
    return term if term is not None and term.mask == "fisher" else None
