"""A run's masks, resolved before its model is built, and the `unified-petl mask` command.

A `sparse(...)` term needs static per-leaf counts (jit shapes) and Child-Tuning_D a fixed
gradient mask; both come from a `masks.SparseMask` computed here (random, magnitude, or the
Fisher information of the first N training examples) or loaded (mask=file).

Resume: the mask a run trains with is written to WORKDIR/mask.safetensors before the first
step and read back by every later `train` / `eval` of that workdir, so a resumed run uses the
very same weights even when recomputing them would differ (a Fisher mask on another number
of devices can break ties differently; a mask file may have changed). A cached mask that
does not match the method (criterion, density, select, pattern, N) is refused.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np

from unified_petl import masks as masks_lib
from unified_petl.delta import sparse as sparse_lib
from unified_petl.delta.spec import Method, SpecError, Term

MASK_FILE = "mask.safetensors"


def mask_term(method: Method) -> Optional[Term]:
    """The term of `method` whose weights come from a mask (sparse without counts,
    Child-Tuning_D), else None."""
    if method.sparse is not None and not method.sparse.counts:
        return method.sparse
    child = method.grad_mask
    return child if child is not None and child.mask == "fisher" else None


def plain_model(config, base, task, method: Method):
    """The run's model without Δh but with its task head, in float32."""
    from unified_petl.build import build
    from unified_petl.train.setup import overridden

    num_labels = None
    if task.kind == "classification":
        num_labels = int(config.model.num_labels) or task.num_labels
    return build(overridden(base.config, config.get("base_overrides")),
                 Method(name="none", train_head=method.train_head), num_labels=num_labels,
                 pretrained_head=bool(config.model.pretrained_head),
                 pooling=str(config.model.pooling))


def helper_model(config, base, task, method: Method):
    """(plain_model, its frozen params, the head's initial values): what the Fisher
    information is taken of. The head is initialised with the run's seed, exactly as the
    trained model's (Flax derives a module's init key from its path)."""
    from unified_petl.build import init_delta
    from unified_petl.train.setup import frozen_params

    model = plain_model(config, base, task, method)
    params = frozen_params(base, model)
    head = init_delta(model, jax.random.key(int(config.seed)), params=params)
    return model, params, head


def head_size(method: Method, head: Any) -> int:
    """New-head parameters inside a sparse term's global budget (FISH); 0 for a frozen head
    (head=false), head_in_budget=false and Child-Tuning_D (its head is never masked)."""
    term = method.sparse or method.diff
    if term is None or not method.train_head or not term.head_in_budget:
        return 0
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(head))


def fisher_for_config(config, base, task, method: Method, num_examples: int, *,
                      mesh=None, batch_size: Optional[int] = None, helper=None
                      ) -> dict[str, np.ndarray]:
    """FISH's Fisher scores of every base weight over the first `num_examples` training
    examples of config's task (see unified_petl.train.fisher). helper: helper_model's
    result, if already made."""
    from unified_petl.train.fisher import fisher_scores
    from unified_petl.train.setup import Run, decoder_start, encode_split
    from unified_petl.train.step import make_mesh

    model, params, head = helper or helper_model(config, base, task, method)
    limited = copy.deepcopy(config)
    limit = int(config.data.max_train_examples)
    limited.data.max_train_examples = min(limit, num_examples) if limit else num_examples
    run = Run(base=base, task=task, model=model, params=params)
    encoded = encode_split(run, limited, "train")
    mesh = mesh if mesh is not None else make_mesh(int(config.num_devices) or None)
    return fisher_scores(model, params, head, encoded, mesh, batch_size=batch_size,
                         decoder_start_token_id=decoder_start(run),
                         buckets=tuple(config.data.buckets) or None)


def compute_mask(config, base, task, method: Method, term: Term, *, mesh=None,
                 batch_size: Optional[int] = None, helper=None) -> masks_lib.SparseMask:
    """The mask of `term` (criterion random | magnitude | fisher) for config's run."""
    helper = helper or helper_model(config, base, task, method)
    _, params, head = helper
    fisher = None
    if term.mask == "fisher":
        fisher = fisher_for_config(config, base, task, method, term.num_examples, mesh=mesh,
                                   batch_size=batch_size, helper=helper)
    solo = Method(terms=(term,), name=method.name, train_head=method.train_head)
    return masks_lib.compute(base, solo, seed=int(config.seed), params=params, fisher=fisher,
                             head=head_size(method, head))


def resolve(config, base, task, method: Method, workdir: Optional[str] = None
            ) -> tuple[Method, Optional[masks_lib.SparseMask]]:
    """(method with its sparse counts, the mask) for a run; (method, None) without a mask term.

    Order: WORKDIR/mask.safetensors of an earlier start of this run, else mask=file's path,
    else computed; then written to WORKDIR/mask.safetensors (process 0) for later starts.
    """
    term = mask_term(method)
    if term is None:
        return method, None
    cached = os.path.join(workdir, MASK_FILE) if workdir else None
    if cached and os.path.isfile(cached):
        mask = masks_lib.SparseMask.load(cached, base)
        _check_matches(mask, term, cached)
    elif term.mask == "file":
        mask = masks_lib.SparseMask.load(term.path, base)
        _check_matches(mask, term, term.path)
    else:
        mask = compute_mask(config, base, task, method, term)
    from unified_petl.build import shape_tree

    shapes = sparse_lib.flat_shapes(shape_tree(plain_model(config, base, task, method)))
    mask.check_shapes(shapes, cached or term.path or "the mask")
    if cached and not os.path.isfile(cached) and jax.process_index() == 0:
        mask.save(cached)
    return mask.attach(method), mask


def _check_matches(mask: masks_lib.SparseMask, term: Term, where: str) -> None:
    """A stored mask must be the one the method asks for."""
    asked = {"density": term.density}
    if term.mask != "file":
        asked.update(criterion=term.mask, select=term.select, pattern=term.pattern,
                     num_examples=term.num_examples if term.mask == "fisher" else 0)
    if not term.density:
        asked.pop("density")
    have = {k: getattr(mask, k) for k in asked}
    differ = {k: (have[k], v) for k, v in asked.items()
              if (abs(have[k] - v) > 1e-12 if isinstance(v, float) else have[k] != v)}
    if differ:
        what = ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in differ.items())
        raise SpecError(f"{where} holds a mask with {what}; use a new workdir, the mask's "
                        "settings, or another mask file")


# ----------------------------------------------------------------------------- CLI
def mask_command(config, *, criterion: str, density: float, num_examples: int, out: str,
                 select: Optional[str] = None, pattern: Optional[str] = None,
                 batch_size: Optional[int] = None) -> masks_lib.SparseMask:
    """`unified-petl mask`: the mask of `criterion` at `density` for config's base and task,
    written to `out`. The budget follows config's method: a sparse term (the new head inside
    a global budget, its select / pattern unless given) or Child-Tuning_D (its pattern, the
    head outside); any other method is treated as a sparse term."""
    from unified_petl.data import get_task
    from unified_petl.delta.spec import parse_method
    from unified_petl.train.config import check_config, with_defaults
    from unified_petl.train.setup import load_base

    config = with_defaults(config)
    check_config(config)
    method = parse_method(config.method)
    if criterion not in masks_lib.CRITERIA:
        raise SpecError(f"unknown criterion {criterion!r}; use {', '.join(masks_lib.CRITERIA)}")
    template = mask_term(method) or method.sparse or Term(form="sparse", at="params")
    form = template.form if template.form in ("sparse", "full") else "sparse"
    if form == "full" and criterion != "fisher":
        form = "sparse"  # Child-Tuning_D's mask is Fisher's; any other is a sparse mask
    term = dataclasses.replace(
        template, form=form, mask=criterion, density=float(density), path="", counts=(),
        num_examples=int(num_examples), select=select or template.select,
        pattern=template.pattern if pattern is None else pattern)
    term.validate()
    method = Method(terms=(term,), name=method.name, train_head=method.train_head)
    base = load_base(config)
    mask = compute_mask(config, base, get_task(config.task), method, term,
                        batch_size=batch_size)
    if jax.process_index() == 0:
        mask.save(out)
    return mask
