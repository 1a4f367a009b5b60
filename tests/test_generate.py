"""Generation: beam search and greedy decoding equal transformers' `generate` token for token;
the KV-cache path agrees with a teacher-forced forward pass, prefixes included; one compile
per shape."""
import importlib

import jax
import numpy as np
import pytest
import torch

import unified_petl as up
from conftest import padded_batch, tiny_hf_model

gen = importlib.import_module("unified_petl.generate")  # the module (up.generate is the function)

BEAM = dict(num_beams=4, max_length=20, min_length=5, no_repeat_ngram_size=3)
# BART: length_penalty 2, early stopping, forced BOS 0 (as bart-large), EOS forced by the config.
# mBART: length_penalty 0.5, no early stopping, a "language code" as the decoder start.
SETTINGS = {
    "bart": dict(BEAM, length_penalty=2.0, early_stopping=True, forced_bos_token_id=0),
    "mbart": dict(BEAM, length_penalty=0.5, early_stopping=False, decoder_start_token_id=97),
}


def _decisive(model, eos_bonus):
    """Tiny random models give near-uniform, source-blind logits (ties make parity a coin
    toss). Larger weights, embedding rows of equal norm (no token wins by its norm alone) and
    a zero final_logits_bias make each step's choice clear and source-dependent; a bonus on
    EOS ends hypotheses at different lengths."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "shared" not in name and "embed" not in name:
                p.mul_(3.0)
        w = model.model.shared.weight
        w.copy_(2.0 * w / w.norm(dim=-1, keepdim=True).clamp_min(1e-3))
        model.final_logits_bias.zero_()
        model.final_logits_bias[0, 2] = eos_bonus
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(kind, eos_bonus) -> (Base, the transformers model, input_ids, attention_mask)."""
    cache = {}

    def make(kind, eos_bonus=4.0):
        key = (kind, eos_bonus)
        if key not in cache:
            hf = _decisive(tiny_hf_model(kind, seed=0 if kind == "bart" else 1), eos_bonus)
            folder = tmp_path_factory.mktemp(f"gen_{kind}")
            hf.save_pretrained(folder)
            ids, mask = padded_batch(np.random.default_rng(0), 3, 10, 99, pad=1)
            cache[key] = (up.load_pretrained(str(folder)), hf, ids, mask)
        return cache[key]

    return make


def _hf_generate(hf, ids, mask, **kw):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids).long(),
                          attention_mask=torch.tensor(mask).long(), do_sample=False,
                          output_scores=True, return_dict_in_generate=True, **kw)
    scores = getattr(out, "sequences_scores", None)
    return out.sequences.numpy(), None if scores is None else scores.numpy()


@pytest.mark.parametrize("kind", ["bart", "mbart"])
def test_beam_search_equals_transformers(kind, setup):
    base, hf, ids, mask = setup(kind)
    kw = SETTINGS[kind]
    ref, ref_scores = _hf_generate(hf, ids, mask, **kw)
    model = up.build(base.config, "none")
    ours, scores = up.generate(model, {"params": base.params}, ids, mask, config=base,
                               return_scores=True, **kw)
    assert ours.shape == ref.shape and ours.dtype == np.int32
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    # the search really finished hypotheses at different lengths (EOS, then padding)
    lengths = (ours != base.config.pad_token_id).sum(1)
    assert len(set(lengths.tolist())) > 1


def test_greedy_equals_transformers(setup):
    base, hf, ids, mask = setup("bart", eos_bonus=3.0)
    kw = dict(num_beams=1, max_length=16, min_length=4, no_repeat_ngram_size=2)
    model = up.build(base.config, "none", decode=True)  # a decode-mode model works as well
    variables = {"params": base.params}
    ours = up.generate(model, variables, ids, mask, config=base.config, **kw)
    np.testing.assert_array_equal(ours, _hf_generate(hf, ids, mask, **kw)[0])
    assert len(set((ours != 1).sum(1).tolist())) > 1  # EOS at different steps, then padding

    # one compile per (batch, source length, max_length): new inputs of the same shapes reuse it
    traces = gen._TRACES[0]
    ids2, mask2 = padded_batch(np.random.default_rng(2), 3, 10, 99, pad=1)
    ours = up.generate(model, variables, ids2, mask2, config=base.config, **kw)
    np.testing.assert_array_equal(ours, _hf_generate(hf, ids2, mask2, **kw)[0])
    assert gen._TRACES[0] == traces


def _teacher_forced_score(model, variables, ids, mask, seqs, settings):
    """The sequence score from one full forward pass (no cache): the sum of the generated
    tokens' log-probs over the generated length (EOS included) / length ** length_penalty.
    Forced tokens score 0, as their log-probs become 0 under the forcing processors."""
    logits = jax.jit(model.apply)(variables, ids, mask, seqs[:, :-1]).logits
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    tokens = seqs[:, 1:]
    picked = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    out = []
    for b in range(len(seqs)):
        eos = np.flatnonzero(tokens[b] == 2)
        n = eos[0] + 1 if len(eos) else tokens.shape[1]
        lp = picked[b, :n].copy()
        lp[0] = 0.0  # forced BOS
        if n == settings["max_length"] - 1:
            lp[-1] = 0.0  # forced EOS at max_length
        out.append(lp.sum() / n ** settings["length_penalty"])
    return np.array(out)


def test_prefix_generation_matches_teacher_forcing(setup):
    base, _, ids, mask = setup("bart")
    kw = SETTINGS["bart"]
    model = up.build(base.config, "prefix(l=3, mlp=False)")
    # prefixes of std 1 (init_delta's 0.02 barely moves this model): the Δh tree's shapes
    # without compiling an init, then random values
    shapes = up.shape_tree(model, "delta")
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    delta = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype)
                               for k, x in zip(keys, leaves)])
    variables = {"params": base.params, "delta": delta}
    seqs, scores = up.generate(model, variables, ids, mask, config=base, return_scores=True,
                               **kw)
    plain = up.generate(up.build(base.config, "none"), {"params": base.params}, ids, mask,
                        config=base, **kw)
    assert seqs.shape != plain.shape or (seqs != plain).any()  # prefix tuning is in the loop

    # the cache path (prefixes outside the cache, tiled over beams) = the full-sequence path
    full = _teacher_forced_score(model, variables, ids, mask, seqs, kw)
    np.testing.assert_allclose(scores, full, atol=1e-4)

    # jit: new inputs and new Δh values of the same shapes reuse the compiled search
    traces = gen._TRACES[0]
    rng = np.random.default_rng(1)
    ids2, mask2 = padded_batch(rng, 3, 10, 99, pad=1)
    delta2 = jax.tree_util.tree_map(lambda x: 0.5 * x, delta)
    up.generate(model, {"params": base.params, "delta": delta2}, ids2, mask2, config=base, **kw)
    assert gen._TRACES[0] == traces


def test_token_ids_and_limits(setup):
    base, _, ids, mask = setup("bart")
    model = up.build(base.config, "none")
    s = gen._settings(model, base, num_beams=2, max_length=10, min_length=0,
                      length_penalty=1.0, no_repeat_ngram_size=0, early_stopping=False,
                      decoder_start_token_id=gen.FROM_CONFIG, forced_bos_token_id=None,
                      forced_eos_token_id=gen.FROM_CONFIG, eos_token_id=gen.FROM_CONFIG,
                      pad_token_id=gen.FROM_CONFIG)
    assert (s.decoder_start_token_id, s.eos_token_ids, s.pad_token_id) == (2, (2,), 1)
    assert s.forced_bos_token_id is None and s.forced_eos_token_ids == (2,)
    with pytest.raises(ValueError, match="eos_token_id"):  # no config, no ids
        up.generate(model, {"params": base.params}, ids, mask, num_beams=2, max_length=10)
    with pytest.raises(ValueError, match="positions"):
        up.generate(model, {"params": base.params}, ids, mask, config=base, num_beams=2,
                    max_length=100)


@pytest.mark.parametrize("num_beams", [4, 1])
def test_eight_devices_decode_the_ids_of_one(setup, num_beams):
    """Decoding split over 8 devices (each searches its own rows of the batch): the ids and
    scores of one device, and no collective in the compiled search (no device decodes
    another's rows, nothing is replicated)."""
    from unified_petl.train.step import make_mesh, replicate

    base, _, _, _ = setup("bart")
    kw = dict(SETTINGS["bart"], num_beams=num_beams)
    ids, mask = padded_batch(np.random.default_rng(3), 16, 10, 99, pad=1)
    model = up.build(base.config, "none")
    one, one_scores = up.generate(model, {"params": base.params}, ids, mask, config=base,
                                  return_scores=True, **kw)
    mesh = make_mesh()
    assert mesh.size == 8
    variables = replicate({"params": base.params}, mesh)
    eight, eight_scores = up.generate(model, variables, ids, mask, config=base,
                                      return_scores=True, mesh=mesh, **kw)
    np.testing.assert_array_equal(eight, one)
    np.testing.assert_allclose(eight_scores, one_scores, atol=1e-5)
    assert len({tuple(r) for r in one.tolist()}) > 4  # source-dependent outputs

    # the program: per device 2 of the 16 rows, and no cross-device traffic
    settings = gen._settings(model, base, **{k: v for k, v in kw.items()
                                             if k != "forced_bos_token_id"},
                             forced_bos_token_id=kw["forced_bos_token_id"],
                             decoder_start_token_id=gen.FROM_CONFIG,
                             forced_eos_token_id=gen.FROM_CONFIG,
                             eos_token_id=gen.FROM_CONFIG, pad_token_id=gen.FROM_CONFIG)
    from unified_petl.train.step import global_batch

    batch = global_batch({"input_ids": ids, "attention_mask": mask}, mesh)
    program = gen._search_sharded.lower(model.clone(decode=True), settings, mesh,
                                        gen.batch_axes(mesh), variables, batch["input_ids"],
                                        batch["attention_mask"]).as_text()
    assert not any(op in program for op in ("all_gather", "all_reduce", "collective_permute",
                                            "all_to_all")), "decoding communicates"
    assert "tensor<2x10xi32>" in program  # each device's own 2 rows of source ids


def test_max_length_past_the_positions_is_refused_before_training(tmp_path_factory, tmp_path):
    """generate.max_length beyond the decoder's 64 positions: one line at setup, not after
    training up to the first decoding evaluation (or not at all, and then at `eval`)."""
    import os

    import tiny_runs
    from unified_petl.train import train
    from unified_petl.train.config import ConfigError

    folder = tiny_runs.model_folder(tmp_path_factory, "bart")
    train_file, eval_file = tiny_runs.write_data(str(tmp_path), "xsum")
    config = tiny_runs.tiny_config(folder, train_file, eval_file, task="xsum")
    config.generate.max_length = 100
    workdir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"generate.* 99 decoder positions; the model has 64.*"
                                          r"generate\.max_length to at most 65"):
        train(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
