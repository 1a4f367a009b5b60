"""Seq2seq generation for (m)BART: jitted beam search and greedy decoding with a KV cache.

    ids = up.generate(model, {"params": base.params, "delta": delta}, input_ids, attention_mask,
                      config=base, num_beams=6, max_length=60, min_length=10,
                      no_repeat_ngram_size=3)

The search is transformers' (v5) `generate` rewritten with static shapes, so that one
`jax.jit` compile serves every batch of a given (batch size, source length, max_length):
the same logits processors (no-repeat n-gram, min length, forced BOS, forced EOS, applied in
that order to the log-softmax), the same top-2K candidate selection, finished-hypothesis
bookkeeping, length penalty `score / generated_length ** length_penalty` (the generated
length counts the EOS, not the decoder start token) and the same early-stopping rule, so
the ids equal transformers' ids for the same weights (tests/test_generate.py).

Cache (DESIGN.md decision 8): the decoder runs with `decode=True`; its `cache` collection is
preallocated to [B·beams, max_length] for self-attention K/V, and holds the cross-attention
K/V computed once from the encoder output, one row per example ([B, S]: the beams of an
example share it; the model folds them into the query axis instead of copying K/V per beam,
a factor `beams` less memory than transformers' cache for long sources). Reordering beams
gathers the self-attention rows only. Prefixes (decoder self and cross) are never in the
cache: the model prepends them at every step, broadcast over the rows. The encoder runs once
per example ([B, S], so encoder prefixes and prompts are per example).

Token ids come from the checkpoint like transformers reads them: `config` may be a `Base`
(from `up.load_pretrained`: its generation_config.json when the folder has one, else its
model config), a transformers model config, a `GenerationConfig` or a dict. Each id can be
overridden by the keyword of the same name; pass None to switch a forced token off. The
search settings (num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size,
early_stopping) are never read from the checkpoint: an experiment states them (REFERENCE.md
decoding row) and they default to transformers' GenerationConfig defaults.
BART: decoder_start_token_id=2 (</s>), forced BOS 0 (<s>), forced EOS 2.
mBART-cc25: pass decoder_start_token_id=<target language code> (e.g. ro_RO's id); its
config has none and transformers would fall back to bos_token_id.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1.0e9  # transformers' "very large negative" for masked beams (not -inf: it is added)


class _FromConfig:
    def __repr__(self):
        return "FROM_CONFIG"


FROM_CONFIG: Any = _FromConfig()  # default of the token-id keywords: read from `config`

_TRACES = [0]  # how many times the search was traced (compiled); read by the tests


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Everything static about one search (hashable: part of the jit cache key)."""

    num_beams: int
    max_length: int
    min_length: int
    length_penalty: float
    no_repeat_ngram_size: int
    early_stopping: Union[bool, str]
    eos_token_ids: tuple
    pad_token_id: int
    decoder_start_token_id: int
    forced_bos_token_id: Optional[int]
    forced_eos_token_ids: Optional[tuple]


def generate(model, variables, input_ids, attention_mask, *, num_beams: int, max_length: int,
             min_length: int = 0, length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             early_stopping: Union[bool, str] = False, config: Any = None,
             decoder_start_token_id: Any = FROM_CONFIG, forced_bos_token_id: Any = FROM_CONFIG,
             forced_eos_token_id: Any = FROM_CONFIG, eos_token_id: Any = FROM_CONFIG,
             pad_token_id: Any = FROM_CONFIG, return_scores: bool = False, mesh=None):
    """Beam search (num_beams > 1) or greedy decoding (num_beams = 1), as transformers does.

    model: a BartForConditionalGeneration from `up.build` (decode=False or True: the decode
      twin is `model.clone(decode=True)`). variables: {'params': frozen, 'delta': Δh}.
    input_ids, attention_mask: [B, S] source ids and mask.
    num_beams, max_length (counts the decoder start token), min_length (likewise; EOS is
      banned while the sequence is shorter), length_penalty, no_repeat_ngram_size,
      early_stopping (True | False | "never"): transformers' meanings.
    config: where the token ids come from (see the module docstring); the keyword ids
      override it (None switches forced BOS / EOS off). eos_token_id and
      forced_eos_token_id may be lists.
    Returns ids [B, T] (numpy int32): the decoder start token, then the best hypothesis,
      right-padded with pad_token_id; T = 1 + the longest hypothesis of the batch (<=
      max_length), the length transformers returns. With return_scores, also its score [B]:
      the sum of processed log-probs, divided by generated_length ** length_penalty in beam
      search (transformers' `sequences_scores`), not divided in greedy decoding.
    One compile per (B, S, max_length) and settings; new weights or inputs do not recompile.
    mesh: decode split over the devices of a jax.sharding.Mesh (the trainer's): each device
      searches its own rows of the batch (sharded on the batch axis of the training batches,
      `data`), with the same ids as one device. Then input_ids / attention_mask are this
      process's rows of a global batch (unified_petl.train.step.global_batch; all rows with
      one process), whose row count the devices divide, and the returned ids (and scores)
      are the whole global batch's, in order, on every process.
    """
    from unified_petl.models.bart import BartForConditionalGeneration

    if not isinstance(model, BartForConditionalGeneration):
        raise TypeError(f"generate needs a (m)BART model from up.build, got {type(model)}")
    settings = _settings(model, config, num_beams=num_beams, max_length=max_length,
                         min_length=min_length, length_penalty=length_penalty,
                         no_repeat_ngram_size=no_repeat_ngram_size,
                         early_stopping=early_stopping,
                         decoder_start_token_id=decoder_start_token_id,
                         forced_bos_token_id=forced_bos_token_id,
                         forced_eos_token_id=forced_eos_token_id, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id)
    dmodel = model if model.decode else model.clone(decode=True)
    variables = {k: v for k, v in dict(variables).items() if k in ("params", "delta")}
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask "
                         f"{attention_mask.shape} must both be [B, S]")
    if input_ids.shape[1] > model.cfg.max_positions:
        raise ValueError(f"source length {input_ids.shape[1]} > the model's "
                         f"{model.cfg.max_positions} positions")
    if mesh is None:
        ids, scores, lengths = _search(dmodel, settings, variables, input_ids, attention_mask)
        ids, scores, lengths = jax.device_get((ids, scores, lengths))
    else:
        ids, scores, lengths = _search_split(dmodel, settings, variables, input_ids,
                                             attention_mask, mesh)
    ids = np.asarray(ids)[:, :1 + int(np.max(lengths))]
    return (ids, np.asarray(scores)) if return_scores else ids


# ---------------------------------------------------------------------------------------------
# settings


def generation_config(config: Any):
    """`config` (Base | transformers config | GenerationConfig | dict | None) -> GenerationConfig
    or None, read the way transformers reads it for `model.generate`."""
    if config is None:
        return None
    from transformers import GenerationConfig

    if isinstance(config, GenerationConfig):
        return config
    if isinstance(config, dict):
        return GenerationConfig(**config)
    if hasattr(config, "params") and hasattr(config, "config"):  # a Base
        path = getattr(config, "path", "") or ""
        if path and os.path.isfile(os.path.join(path, "generation_config.json")):
            return GenerationConfig.from_pretrained(path)
        config = config.config
    return GenerationConfig.from_model_config(config)


def _ids(value) -> Optional[tuple]:
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _settings(model, config, *, num_beams, max_length, min_length, length_penalty,
              no_repeat_ngram_size, early_stopping, **token_ids) -> SearchSettings:
    gen = generation_config(config)

    def pick(name):
        value = token_ids[name]
        if value is FROM_CONFIG:
            value = getattr(gen, name, None) if gen is not None else None
        return value

    eos = _ids(pick("eos_token_id"))
    start = pick("decoder_start_token_id")
    if start is None and token_ids["decoder_start_token_id"] is FROM_CONFIG and gen is not None:
        start = gen.bos_token_id  # transformers' fallback
    pad = pick("pad_token_id")
    if pad is None and token_ids["pad_token_id"] is FROM_CONFIG:
        pad = model.cfg.pad_token_id if config is None else (eos[0] if eos else None)
    missing = [n for n, v in (("eos_token_id", eos), ("decoder_start_token_id", start),
                              ("pad_token_id", pad)) if v is None]
    if missing:
        raise ValueError(f"generate needs {', '.join(missing)}: pass config= (the checkpoint's "
                         "Base or transformers config) or the ids themselves")
    if isinstance(start, (list, tuple)):
        raise ValueError("one decoder_start_token_id for the whole batch, got a list")
    forced_bos = pick("forced_bos_token_id")
    forced_eos = _ids(pick("forced_eos_token_id"))

    if int(num_beams) < 1:
        raise ValueError(f"num_beams={num_beams} must be >= 1")
    if int(max_length) < 2:
        raise ValueError(f"max_length={max_length} must be >= 2 (the start token and one more)")
    if int(max_length) - 1 > model.cfg.max_positions:
        raise ValueError(f"max_length={max_length} needs {max_length - 1} decoder positions; "
                         f"the model has {model.cfg.max_positions}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping={early_stopping!r}: True, False or 'never'")
    early_stopping = early_stopping if early_stopping == "never" else bool(early_stopping)
    if int(min_length) < 0 or int(no_repeat_ngram_size) < 0:
        raise ValueError("min_length and no_repeat_ngram_size must be >= 0")
    return SearchSettings(
        num_beams=int(num_beams), max_length=int(max_length), min_length=int(min_length),
        length_penalty=float(length_penalty), no_repeat_ngram_size=int(no_repeat_ngram_size),
        early_stopping=early_stopping, eos_token_ids=eos, pad_token_id=int(pad),
        decoder_start_token_id=int(start),
        forced_bos_token_id=None if forced_bos is None else int(forced_bos),
        forced_eos_token_ids=forced_eos)


# ---------------------------------------------------------------------------------------------
# the model, one step at a time


def _decode_fn(model, variables, enc_mask):
    """-> step(cache, tokens [N], position (scalar)) -> (logits [N, V], cache): one decoding
    step on a primed cache (the cross K/V are read from it)."""
    decode_logits = type(model).decode_logits

    def step(cache, tokens, position):
        positions = jnp.full((tokens.shape[0], 1), position, jnp.int32)
        (logits, _), state = model.apply({**variables, "cache": cache}, tokens[:, None], None,
                                         enc_mask, positions=positions, method=decode_logits,
                                         mutable=["cache"])
        return logits[:, 0].astype(jnp.float32), state["cache"]

    return step


def _primed_cache(model, variables, enc, enc_mask, n, max_length):
    """The decode cache for [N, max_length] decoding: self-attention K/V zeros (shapes by
    jax.eval_shape), cross-attention K/V computed from `enc` [B, S, d] by a call with no
    decoder tokens ([N, 0]: XLA folds the empty decoder away, so only the K/V projections are
    compiled)."""
    decode_logits = type(model).decode_logits

    def run(cache, ids):
        collections = dict(variables, cache=cache) if cache is not None else variables
        _, state = model.apply(collections, ids, enc, enc_mask, positions=jnp.zeros_like(ids),
                               method=decode_logits, mutable=["cache"])
        return state["cache"]

    shapes = jax.eval_shape(lambda: run(None, jnp.zeros((n, max_length), jnp.int32)))
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return run(cache, jnp.zeros((n, 0), jnp.int32))


def _reorder_cache(cache, rows):
    """Gather the self-attention K/V rows (beam reordering); the index and the cross K/V (one
    row per example, shared by its beams) stay."""
    def gather(path, leaf):
        name = getattr(path[-1], "key", None)
        return jnp.take(leaf, rows, axis=0) if name in ("key", "value") else leaf

    return jax.tree_util.tree_map_with_path(gather, cache)


# ---------------------------------------------------------------------------------------------
# logits processors (transformers' order: no-repeat n-gram, min length, forced BOS, forced EOS)


def _banned_ngrams(seqs, cur_len, n, vocab):
    """[N, L] sequences whose first cur_len tokens are filled -> [N, V] bool: the tokens that
    would repeat an n-gram (transformers' NoRepeatNGramLogitsProcessor)."""
    rows, length = seqs.shape
    starts = length - n + 1
    windows = jnp.stack([seqs[:, i:i + starts] for i in range(n)], -1)  # [N, W, n]
    prefix = jax.lax.dynamic_slice_in_dim(seqs, jnp.maximum(cur_len + 1 - n, 0), n - 1, 1)
    complete = jnp.arange(starts) + n <= cur_len  # windows that lie inside the filled part
    match = jnp.all(windows[..., :-1] == prefix[:, None, :], -1) & complete[None]
    hits = jnp.zeros((rows, vocab), jnp.int32).at[
        jnp.arange(rows)[:, None], windows[..., -1]].add(match.astype(jnp.int32), mode="drop")
    return (hits > 0) & (cur_len >= n)


def _process(s: SearchSettings, scores, seqs, cur_len):
    """scores [N, V] for the token at index cur_len, seqs [N, L] -> processed scores."""
    vocab = scores.shape[-1]
    col = jnp.arange(vocab)
    if s.no_repeat_ngram_size > 0:
        banned = _banned_ngrams(seqs, cur_len, s.no_repeat_ngram_size, vocab)
        scores = jnp.where(banned, -jnp.inf, scores)
    if s.min_length > 0:
        is_eos = jnp.isin(col, jnp.array(s.eos_token_ids))
        scores = jnp.where(is_eos & (cur_len < s.min_length), -jnp.inf, scores)
    if s.forced_bos_token_id is not None:
        forced = jnp.where(col == s.forced_bos_token_id, 0.0, -jnp.inf)
        scores = jnp.where(cur_len == 1, forced, scores)
    if s.forced_eos_token_ids is not None:
        forced = jnp.where(jnp.isin(col, jnp.array(s.forced_eos_token_ids)), 0.0, -jnp.inf)
        scores = jnp.where(cur_len == s.max_length - 1, forced, scores)
    return scores


def _length_penalties(s: SearchSettings) -> jnp.ndarray:
    """[max_length + 1] float32: length ** length_penalty, computed in float64 like Python's
    `**` in transformers and rounded once (index 0 unused)."""
    return jnp.asarray(np.array([1.0] + [float(n) ** s.length_penalty
                                         for n in range(1, s.max_length + 1)], np.float32))


# ---------------------------------------------------------------------------------------------
# the searches


def _search_rows(model, settings: SearchSettings, variables, input_ids, attention_mask):
    """-> (ids [B, max_length], scores [B], generated lengths [B])."""
    _TRACES[0] += 1
    from unified_petl.models.bart import BartForConditionalGeneration

    enc, enc_mask = model.apply(variables, input_ids, attention_mask,
                                method=BartForConditionalGeneration.encode)
    # decoder rows: b·K + j is beam j of example b; the encoder output, its mask and the
    # cross K/V stay one row per example (the model folds the beams into the query axis)
    n = input_ids.shape[0] * settings.num_beams
    cache = _primed_cache(model, variables, enc, enc_mask, n, settings.max_length)
    step = _decode_fn(model, variables, enc_mask)
    if settings.num_beams == 1:
        return _greedy(settings, step, cache, input_ids.shape[0])
    return _beam(settings, step, cache, input_ids.shape[0])


_search = jax.jit(_search_rows, static_argnames=("model", "settings"))


def batch_axes(mesh) -> tuple:
    """The mesh axes the trainer shards a batch's rows over (train.step.data_sharded)."""
    from unified_petl.train.step import data_sharded

    first = data_sharded(mesh).spec[0]
    return tuple(first) if isinstance(first, (tuple, list)) else (first,)


def _search_split(model, settings, variables, input_ids, attention_mask, mesh):
    """_search on every device of `mesh` for its rows; numpy (ids, scores, lengths) of the
    whole global batch on every process."""
    from unified_petl.train.step import gather, global_batch

    axes = batch_axes(mesh)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    rows = input_ids.shape[0] * jax.process_count()
    if rows % shards:
        raise ValueError(f"a batch of {rows} rows does not split over the {shards} devices of "
                         f"the mesh; use a multiple of {shards} rows")
    batch = global_batch({"input_ids": np.asarray(input_ids),
                          "attention_mask": np.asarray(attention_mask)}, mesh)
    out = _search_sharded(model, settings, mesh, axes, variables, batch["input_ids"],
                          batch["attention_mask"])
    return tuple(gather(x) for x in out)


@functools.partial(jax.jit, static_argnames=("model", "settings", "mesh", "axes"))
def _search_sharded(model, settings, mesh, axes, variables, input_ids, attention_mask):
    """_search inside shard_map over the batch axes: per device, its rows alone (beam
    reordering gathers local rows; no device waits for another's hypotheses). Other mesh
    axes (e.g. an FSDP axis of the weights) stay with the compiler."""
    from jax.sharding import PartitionSpec as P

    rows = P(axes)
    search = jax.shard_map(functools.partial(_search_rows, model, settings),
                           mesh=mesh, in_specs=(P(), rows, rows), out_specs=(rows, rows, rows),
                           axis_names=frozenset(axes), check_vma=False)
    return search(variables, input_ids, attention_mask)


def _greedy(s: SearchSettings, step, cache, batch):
    """transformers' greedy decoding (`_sample` with do_sample=False)."""
    length = s.max_length
    seqs = jnp.full((batch, length), s.pad_token_id, jnp.int32)
    seqs = seqs.at[:, 0].set(s.decoder_start_token_id)
    eos = jnp.array(s.eos_token_ids)

    def update(state, logits, cache):
        seqs, unfinished, score, gen_len, cur_len = state[:5]
        processed = _process(s, logits, seqs, cur_len)
        token = jnp.argmax(processed, -1).astype(jnp.int32)  # on the processed logits, as HF
        logp = _process(s, jax.nn.log_softmax(logits, -1), seqs, cur_len)
        picked = jnp.take_along_axis(logp, token[:, None], -1)[:, 0]
        token = jnp.where(unfinished, token, s.pad_token_id)
        seqs = jax.lax.dynamic_update_slice(seqs, token[:, None], (0, cur_len))
        score = score + jnp.where(unfinished, picked, 0.0)
        gen_len = gen_len + unfinished.astype(jnp.int32)
        unfinished = unfinished & ~(jnp.isin(token, eos) | (cur_len + 1 >= length))
        return seqs, unfinished, score, gen_len, cur_len + 1, cache

    state = (seqs, jnp.ones((batch,), bool), jnp.zeros((batch,), jnp.float32),
             jnp.zeros((batch,), jnp.int32), jnp.int32(1), cache)

    def body(state):
        seqs, cur_len, cache = state[0], state[4], state[5]
        token = jax.lax.dynamic_index_in_dim(seqs, cur_len - 1, 1, keepdims=False)
        logits, cache = step(cache, token, cur_len - 1)
        return update(state, logits, cache)

    state = jax.lax.while_loop(lambda st: jnp.any(st[1]), body, state)
    seqs, _, score, gen_len = state[:4]
    return seqs, score, gen_len


def _beam(s: SearchSettings, step, cache, batch):
    """transformers' (v5) vectorised beam search, step for step."""
    k, length, lp = s.num_beams, s.max_length, s.length_penalty
    keep = max(2, 1 + len(s.eos_token_ids)) * k  # candidates kept per step
    top_mask = jnp.arange(keep) < k  # only the best K candidates may finish
    penalty = _length_penalties(s)
    eos = jnp.array(s.eos_token_ids)
    stop_early = s.early_stopping is True

    seqs = jnp.full((batch, k, length), s.pad_token_id, jnp.int32)
    seqs = seqs.at[:, :, 0].set(s.decoder_start_token_id)
    state = dict(
        seqs=seqs,  # running hypotheses
        scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(NEG),
        fin_seqs=seqs, fin_scores=jnp.full((batch, k), NEG, jnp.float32),
        fin_done=jnp.zeros((batch, k), bool), fin_len=jnp.zeros((batch, k), jnp.int32),
        improvable=jnp.ones((batch, 1), bool),  # is_early_stop_heuristic_unsatisfied
        all_hit=jnp.array(False),  # every candidate of the last step hit a stopping criterion
        cur_len=jnp.int32(1))

    def gather(x, idx):  # [B, M, ...] by [B, M'] -> [B, M', ...]
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def update(st, logits, cache):
        cur_len = st["cur_len"]
        vocab = logits.shape[-1]
        flat_seqs = st["seqs"].reshape(batch * k, length)
        logp = _process(s, jax.nn.log_softmax(logits, -1), flat_seqs, cur_len)
        acc = (logp.reshape(batch, k, vocab) + st["scores"][..., None]).reshape(batch, k * vocab)
        top_scores, top_idx = jax.lax.top_k(acc, keep)
        src = top_idx // vocab
        token = (top_idx % vocab).astype(jnp.int32)
        top_seqs = gather(st["seqs"], src)
        top_seqs = jnp.where(jnp.arange(length) == cur_len, token[..., None], top_seqs)
        hits = jnp.isin(token, eos) | (cur_len + 1 >= length)

        # running hypotheses for the next step: the best K that did not stop
        running = top_scores + hits.astype(jnp.float32) * NEG
        nxt = jax.lax.top_k(running, k)[1]
        seqs, scores, src_run = gather(top_seqs, nxt), gather(running, nxt), gather(src, nxt)

        # finished hypotheses: merge the candidates that just stopped (length-penalised)
        fin = top_scores / penalty[cur_len]  # generated length = cur_len (with the EOS)
        full = jnp.all(st["fin_done"], -1, keepdims=True) & stop_early
        fin = fin + full.astype(jnp.float32) * NEG
        fin = fin + (~st["improvable"]).astype(jnp.float32) * NEG
        just = hits & top_mask[None]
        fin = fin + (~just).astype(jnp.float32) * NEG
        merged = jnp.concatenate([st["fin_scores"], fin], 1)
        best = jax.lax.top_k(merged, k)[1]
        fin_seqs = gather(jnp.concatenate([st["fin_seqs"], top_seqs], 1), best)
        fin_done = gather(jnp.concatenate([st["fin_done"], just], 1), best)
        fin_len = gather(jnp.concatenate([st["fin_len"], jnp.full_like(token, cur_len)], 1), best)
        fin_scores = gather(merged, best)

        # can a running hypothesis still beat the worst finished one?
        cur_len = cur_len + 1
        if s.early_stopping == "never" and lp > 0.0:
            best_len = jnp.int32(length - 1)
        else:
            best_len = cur_len - 1
        best_possible = scores[:, :1] / penalty[best_len]
        worst = jnp.where(fin_done, jnp.min(fin_scores, 1, keepdims=True), NEG)
        improvable = st["improvable"] & jnp.any(best_possible > worst, -1, keepdims=True)

        rows = (jnp.arange(batch)[:, None] * k + src_run).reshape(-1)
        new = dict(seqs=seqs, scores=scores, fin_seqs=fin_seqs, fin_scores=fin_scores,
                   fin_done=fin_done, fin_len=fin_len, improvable=improvable,
                   all_hit=jnp.all(hits), cur_len=cur_len)
        return new, _reorder_cache(cache, rows)

    def unfinished(st):
        open_beam = ~(jnp.all(st["fin_done"]) & stop_early)
        return jnp.any(st["improvable"]) & open_beam & ~st["all_hit"]

    def body(carry):
        st, cache = carry
        cur_len = st["cur_len"]
        token = jax.lax.dynamic_index_in_dim(st["seqs"].reshape(batch * k, length),
                                             cur_len - 1, 1, keepdims=False)
        logits, cache = step(cache, token, cur_len - 1)
        return update(st, logits, cache)

    state, _ = jax.lax.while_loop(lambda c: unfinished(c[0]), body, (state, cache))
    return state["fin_seqs"][:, 0], state["fin_scores"][:, 0], state["fin_len"][:, 0]
