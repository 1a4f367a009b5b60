"""`build`: a transformers config + a Δh method -> a Flax module; `init_delta`: its Δh tree."""
from __future__ import annotations

import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from unified_petl.delta.spec import Method, SpecError, parse_method
from unified_petl.models.config import arch_config


def build(config: Any, method: "str | Method" = "none", *, num_labels: Optional[int] = None,
          pretrained_head: Optional[bool] = None, pooling: str = "cls", dtype=jnp.float32,
          decode: bool = False, remat: str = "none"):
    """The base model of `config` with the Δh of `method` at the paper's points.

    config: a transformers config (or ArchConfig). method: a preset string ('mam(l=30,r=512)')
    or a Method; the options it leaves to the base (adapter dropout, ...) are set from `config`
    (`Method.resolve`), so the model's `method` holds the numbers it computes with.
    num_labels: encoder-only models get a classification head with this many labels (None:
    the checkpoint's head if its architecture has one, else no head).
    pretrained_head: the head's weights come from the checkpoint (frozen `params`) rather than
    being new (`delta`). pooling: what an encoder's head reads, "cls" (the first token) or
    "mean" (masked mean, for sentence-transformers bases). dtype: compute dtype (bf16 for
    speed; weights and Δh stay fp32).
    decode: (m)BART decoder with a KV cache, for generation.
    remat: rematerialisation policy of each layer in training (unified_petl.models.remat:
    'none', 'full', 'dots_saveable', ...); parameter names are unchanged.
    """
    from unified_petl.models.bart import BartForConditionalGeneration
    from unified_petl.models.remat import check_policy
    from unified_petl.models.roberta import RobertaModel

    check_policy(remat)
    cfg = arch_config(config)
    method = parse_method(method) if isinstance(method, str) else method.validate()
    method = method.resolve(cfg).validate(encoder_only=not cfg.seq2seq)
    if method.sparse is not None and not method.sparse.counts:
        raise SpecError(f"{method.sparse.short()} chooses its weights from a mask: resolve it "
                        "before building the model (mask = up.masks.compute(...) or "
                        "up.masks.SparseMask.load(path, base); up.build(config, "
                        "mask.attach(method), ...)); the trainer does this itself")
    if cfg.seq2seq:
        return BartForConditionalGeneration(cfg, method, decode=decode, dtype=dtype, remat=remat)
    has_cls_arch = any("ForSequenceClassification" in a
                       for a in (getattr(config, "architectures", None) or []))
    if num_labels is None:
        num_labels = cfg.num_labels if has_cls_arch else 0
    if pretrained_head is None:
        pretrained_head = has_cls_arch
    if num_labels < 0:
        raise ValueError(f"num_labels={num_labels} must be >= 0")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={pooling!r}: use 'cls' (first token) or 'mean'")
    if pooling == "mean" and pretrained_head:
        raise ValueError("pooling='mean' needs a new head (pretrained_head=False): the "
                         "checkpoint's head was trained on the first token")
    return RobertaModel(cfg, method, num_labels=num_labels, pretrained_head=pretrained_head,
                        pooling=pooling, dtype=dtype, remat=remat)


def dummy_batch(model, batch_size: int = 1, length: int = 8) -> dict[str, np.ndarray]:
    """A tiny batch of the right kind for shape evaluation and initialisation."""
    ids = np.ones((batch_size, length), np.int32) * 5
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if model.cfg.seq2seq:
        batch["decoder_input_ids"] = ids
    return batch


def shape_tree(model, collection: Optional[str] = "params") -> Any:
    """ShapeDtypeStructs of one collection (None: every collection), with no FLOPs and no
    memory (jax.eval_shape)."""
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    shapes = jax.eval_shape(lambda: model.init(rngs, **dummy_batch(model)))
    return dict(shapes) if collection is None else shapes.get(collection, {})


def init_delta(model, rng: jax.Array, batch: Optional[dict] = None, params: Any = None, *,
               masks=None, initial: Optional[dict] = None) -> Any:
    """The `delta` collection of `model` ({} when the method has no Δh variables).

    With `params`, only Δh is initialised (apply with the frozen tree, `delta` mutable);
    without, the whole model is initialised and its random base weights are dropped.
    masks: the resolved mask of a sparse term (unified_petl.masks.SparseMask): its indices
    fill the sparse index leaves; required when the model has any.
    initial: {'/'-joined delta path: array} replacing the initial values of those leaves
    (a warm start, e.g. diff pruning's stage 2); every path must exist with its shape.
    """
    batch = dict(batch if batch is not None else dummy_batch(model))
    batch = {k: v for k, v in batch.items() if k in _INPUT_KEYS}
    rngs = {"params": rng, "dropout": jax.random.fold_in(rng, 1)}
    if params is None:
        if any(t.dora for t in model.method.of("lora")):  # m would be the random base's norm
            raise SpecError("DoRA's magnitude starts at the norm of the pretrained weight: pass "
                            "params= (the frozen tree) to init_delta")
        variables = jax.jit(lambda r: model.init(r, **batch))(rngs)
        check_patterns(model.method, variables["params"])
        delta = variables.get("delta", {})
    else:
        check_patterns(model.method, params)
        _, state = jax.jit(lambda p, r: model.apply({"params": p}, **batch, rngs=r,
                                                    mutable=["delta"]))(params, rngs)
        delta = state.get("delta", {})
    if model.method.sparse is not None:
        from unified_petl.delta.sparse import flat_shapes, with_indices

        if masks is None:
            raise ValueError(f"{model.method.sparse.short()}: pass masks= (the SparseMask "
                             "the method's counts came from) so that its indices are filled in")
        delta = with_indices(delta, masks.indices(),
                             flat_shapes(shape_tree(model, "params")))
    if initial:
        delta = _replace_leaves(delta, initial)
    return delta


def _replace_leaves(delta: Any, initial: dict) -> Any:
    flat = traverse_util.flatten_dict(delta, sep="/")
    for path, value in initial.items():
        if path not in flat:
            raise ValueError(f"initial Δh leaf {path} does not exist in this model's Δh; "
                             "it was saved for another method")
        old = flat[path]
        if tuple(np.shape(value)) != tuple(old.shape) or np.asarray(value).dtype != old.dtype:
            raise ValueError(f"initial Δh leaf {path} is {np.asarray(value).dtype}"
                             f"{tuple(np.shape(value))}, the model's {old.dtype}"
                             f"{tuple(old.shape)}")
        if np.issubdtype(old.dtype, np.integer) and not np.array_equal(old, value):
            raise ValueError(f"initial Δh leaf {path}: sparse indices differ from the mask's; "
                             "the warm start was saved with another mask")
        flat[path] = jnp.asarray(value)
    return traverse_util.unflatten_dict(flat, sep="/")


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "decoder_input_ids",
               "decoder_attention_mask")


def check_patterns(method: Method, params: Any) -> None:
    """Refuse a masked(pattern=...) term that matches no leaf of `params` (the frozen tree or
    its shapes): it would train nothing and the run would look fine."""
    if not method.masked_patterns:
        return
    paths = ["/".join(p) for p in traverse_util.flatten_dict(params)]
    for pattern in method.masked_patterns:
        if not any(re.fullmatch(pattern, path) for path in paths):
            examples = [p for p in paths if re.search(r"layers?_0/", p)][:2] or paths[:2]
            raise SpecError(f"masked(pattern={pattern!r}) matches no parameter of this model; "
                            f"the pattern must match whole paths such as "
                            f"{' or '.join(map(repr, examples))}")
