"""The Δh functional forms as the authors' code computes them (GitHub
jxhe/unify-parameter-efficient-tuning, a transformers 4.9 fork), each against a transcription:

- petl/petl_factory.py Adapter_Layer.forward: LN "in" on the input, down, ReLU, dropout on the
  hidden activation, up, × s, LN "out" last (so LN(s·up), not s·LN(up));
- dropout p = the base's dropout (FFN adapters) or attention dropout (attention adapters);
- attention adapters carry a trainable LayerNorm on their input (modeling_bart.py BartAttention,
  modeling_roberta.py RobertaSelfAttention / RobertaSelfOutput: adapter_layernorm_option="in");
- the multi-head parallel adapter ('cross_attn_relu'): BART: q = q_proj(LN(x)) unscaled, ReLU,
  dropout; RoBERTa: the attention's own query, q P_k^T / sqrt(d_h), ReLU, dropout;
- BitFit leaves BART's final_logits_bias (a buffer there) alone.

The model-level checks run transformers' PyTorch BART / RoBERTa with the reference's
modification added by hooks, and compare with our Flax model with the same random Δh.
"""
import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import unified_petl as up
from conftest import padded_batch, tiny_hf_model
from unified_petl.delta.adapter import Adapter, MultiHeadAdapter
from unified_petl.delta.spec import Term
from unified_petl.train.setup import overridden


# --------------------------------------------------------------------------- transcriptions
def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def reference_adapter(x, v, *, scale, ln, mask=None, rate=0.0):
    """Adapter_Layer.forward(x, add_residual=False) of petl_factory.py, line by line (weights
    in our [in, out] layout). mask: the kept hidden units (training dropout), or None (eval)."""
    if ln == "in":
        x = layer_norm(x, v["ln_in_scale"], v["ln_in_bias"])
    down = x @ v["down_kernel"] + v["down_bias"]
    down = np.maximum(down, 0.0)
    if mask is not None:  # nn.functional.dropout(down, p=rate, training=True)
        down = down * mask / (1.0 - rate)
    up_ = down @ v["up_kernel"] + v["up_bias"]
    up_ = up_ * scale
    if ln == "out":
        up_ = layer_norm(up_, v["ln_out_scale"], v["ln_out_bias"])
    return up_


def _randomised(tree, seed, std=0.3):
    """Every leaf random (LayerNorm scales around 1), so a parity test can fail; `tree` may
    hold arrays or shapes (up.shape_tree: no compile)."""
    flat = traverse_util.flatten_dict(tree)
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in flat.items():
        noise = rng.normal(0.0, std, leaf.shape).astype(np.float32)
        out[path] = jnp.asarray(noise + (1.0 if path[-1].endswith("_scale") else 0.0))
    return traverse_util.unflatten_dict(out)


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


# --------------------------------------------------------------------------- the adapter function
def _adapter_term(ln, s, dropout=0.3):
    return Term(form="adapter", at="ffn", size=16, scale=s,
                composition="scaled" if s != 1.0 else "add", layernorm=ln, dropout=dropout)


@pytest.mark.parametrize("ln", ["in", "out", "none"])
@pytest.mark.parametrize("s", [1.0, 4.0])
def test_adapter_matches_the_reference_forward_with_its_dropout_mask(ln, s):
    d, rate = 24, 0.3
    z = np.random.default_rng(0).normal(size=(4, 16, d)).astype(np.float32)
    module = Adapter(_adapter_term(ln, s, rate), features=d)
    variables = _randomised(module.init({"params": jax.random.key(0)}, z), seed=1)
    v = _np(variables["delta"])

    # evaluation: no dropout, the reference's formula
    out = module.apply(variables, z, deterministic=True)
    np.testing.assert_allclose(out, reference_adapter(z, v, scale=s, ln=ln), atol=1e-5, rtol=0)
    again = module.apply(variables, z, deterministic=True, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(out, again)

    # training: dropout on the hidden activation [..., r], kept units scaled by 1/(1-p)
    out, state = module.apply(variables, z, deterministic=False,
                              rngs={"dropout": jax.random.key(3)},
                              capture_intermediates=True, mutable=["intermediates"])
    dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
    assert dropped.shape == (4, 16, 16)  # the hidden activation, not the input or output
    x_in = layer_norm(z, v["ln_in_scale"], v["ln_in_bias"]) if ln == "in" else z
    hidden = np.maximum(x_in @ v["down_kernel"] + v["down_bias"], 0.0)
    mask = dropped != 0
    np.testing.assert_allclose(dropped, hidden * mask / (1 - rate), atol=1e-5, rtol=0)
    active = hidden > 0
    assert abs((~mask[active]).mean() - rate) < 0.05  # about p of the live units dropped
    np.testing.assert_allclose(out, reference_adapter(z, v, scale=s, ln=ln, mask=mask,
                                                      rate=rate), atol=1e-5, rtol=0)
    assert np.abs(np.asarray(out) - np.asarray(again)).max() > 1e-3  # dropout was on
    # dropout=0 stays expressible: training then computes the evaluation's output
    off = Adapter(_adapter_term(ln, s, 0.0), features=d)
    np.testing.assert_array_equal(
        off.apply(variables, z, deterministic=False, rngs={"dropout": jax.random.key(3)}),
        off.apply(variables, z, deterministic=True))


def test_layernorm_out_normalises_the_scaled_output():
    """ln=out with s=4: LN(s·up) (petl_factory.py Adapter_Layer.forward), not s·LN(up)."""
    d, s = 24, 4.0
    z = np.random.default_rng(0).normal(size=(2, 5, d)).astype(np.float32)
    module = Adapter(_adapter_term("out", s, 0.0), features=d)
    variables = _randomised(module.init({"params": jax.random.key(0)}, z), seed=2)
    v = _np(variables["delta"])
    out = np.asarray(module.apply(variables, z))
    np.testing.assert_allclose(out, reference_adapter(z, v, scale=s, ln="out"), atol=1e-5,
                               rtol=0)
    up_ = np.maximum(z @ v["down_kernel"] + v["down_bias"], 0) @ v["up_kernel"] + v["up_bias"]
    other_order = s * layer_norm(up_, v["ln_out_scale"], v["ln_out_bias"])
    assert np.abs(out - other_order).max() > 0.5


def test_multi_head_adapter_relu_then_dropout():
    """Δ_i = drop(ReLU(q_i P_k^(i)T)) P_v^(i), q = W_q LN(x) + b_q (BART form): the dropout
    mask hits the ReLU activations [B, H, T, r]."""
    d, heads, r, rate = 16, 4, 6, 0.3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, d)).astype(np.float32)
    w_q, b_q = rng.normal(size=(d, d)).astype(np.float32), rng.normal(size=d).astype(np.float32)
    project = lambda z: (z @ w_q + b_q).reshape(z.shape[:-1] + (heads, d // heads))
    term = Term(form="adapter", at="heads", size=r, layernorm="in", dropout=rate)
    module = MultiHeadAdapter(term)
    variables = _randomised(module.init({"params": jax.random.key(0)}, x, project), seed=3)
    v = _np(variables["delta"])
    q = project(layer_norm(x, v["ln_in_scale"], v["ln_in_bias"]))  # [B, T, H, d_h]
    scores = np.maximum(np.einsum("bthd,rhd->bhtr", q, v["p_k"]), 0.0)
    out, state = module.apply(variables, x, project, deterministic=False,
                              rngs={"dropout": jax.random.key(1)},
                              capture_intermediates=True, mutable=["intermediates"])
    dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
    mask = dropped != 0
    np.testing.assert_allclose(dropped, scores * mask / (1 - rate), atol=1e-4, rtol=0)
    expected = np.einsum("bhtr,rhd->bthd", scores * mask / (1 - rate), v["p_v"])
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    evaluated = module.apply(variables, x, project, deterministic=True)
    np.testing.assert_allclose(evaluated, np.einsum("bhtr,rhd->bthd", scores, v["p_v"]),
                               atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- defaults from the base
def _configs():
    import transformers as tf

    bart = tf.BartConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
                         dropout=0.3, attention_dropout=0.2)
    roberta = tf.RobertaConfig(hidden_size=32, num_attention_heads=4,
                               hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2)
    return {"bart": bart, "roberta": roberta}


def _adapter_terms(config, method):
    return [(t.at, t.dropout, t.layernorm) for t in up.build(config, method).method.terms
            if t.form == "adapter"]


@pytest.mark.parametrize("kind", ["bart", "roberta"])
def test_adapter_defaults_come_from_the_base(kind):
    """dropout: the model's (FFN) / the attention dropout (attention, heads); LayerNorm on the
    input of attention adapters, none at the FFN (the reference's Adapter_Layer calls)."""
    config = _configs()[kind]
    heads_ln = "in" if kind == "bart" else "none"
    expected = {
        "pa(r=4)": [("ffn", 0.3, "none")],
        "pa(r=4, at=attn)": [("attn", 0.2, "in")],
        "sa(r=4, at=attn)": [("attn", 0.2, "in")],
        "scaled_pa(r=4)": [("ffn", 0.3, "none")],
        "pfeiffer(r=4)": [("ffn", 0.3, "none")],
        "houlsby(r=4)": [("attn", 0.2, "in"), ("ffn", 0.3, "none")],
        "mam(l=2, r=4)": [("ffn", 0.3, "none")],
        "mh_pa(r=4)": [("heads", 0.2, heads_ln)],
        "pa(r=30, at=attn) + pa(r=8, at=ffn)": [("attn", 0.2, "in"), ("ffn", 0.3, "none")],
        # explicit options win; dropout=0 and ln=none stay expressible
        "pa(r=4, at=attn, dropout=0, ln=none)": [("attn", 0.0, "none")],
        "houlsby(r=4, ln=none, dropout=0.05)": [("attn", 0.05, "none"), ("ffn", 0.05, "none")],
        "mam(l=2, r=4, dropout=0, ln=in)": [("ffn", 0.0, "in")],
        "mh_pa(r=4, ln=none, dropout=0)": [("heads", 0.0, "none")],
    }
    for method, terms in expected.items():
        assert _adapter_terms(config, method) == terms, method
    # the multi-head adapter's scale: BART none, RoBERTa 1/sqrt(d_h) (d_h = 8)
    (mh,) = up.build(config, "mh_pa(r=4)").method.terms
    assert mh.scale == (1.0 if kind == "bart" else 8 ** -0.5)
    # the trainer applies base_overrides before build: the mBART run's attention_dropout=0
    key = "attention_dropout" if kind == "bart" else "attention_probs_dropout_prob"
    assert _adapter_terms(overridden(config, {key: 0.0}), "houlsby(r=4)")[0] == (
        "attn", 0.0, "in")
    # the built method (stored and compared by checkpoints) holds the numbers
    stored = json.loads(json.dumps(up.build(config, "houlsby(r=4)").method.to_dict()))
    assert [t["dropout"] for t in stored["terms"]] == [0.2, 0.3]
    assert up.Method.from_dict(stored) == up.build(config, "houlsby(r=4)").method
    # the count does not depend on dropout
    assert up.count(config, "pa(r=4)")["trained"] == up.count(config, "pa(r=4, dropout=0)")[
        "trained"]


def test_adapter_dropout_on_in_training_off_in_evaluation(tiny_checkpoint):
    base = up.load_pretrained(tiny_checkpoint("bart", layers=1))
    config = overridden(base.config, {"dropout": 0.0, "attention_dropout": 0.0,
                                      "activation_dropout": 0.0})  # only Δh dropout left
    rng = np.random.default_rng(0)
    ids, mask = padded_batch(rng, 2, 9, 99, pad=1)
    batch = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :6])

    # three kinds of adapter site at once (attention PA, sequential FFN adapter, MH PA): few
    # compiles; the unit tests above pin where each mask goes and that dropout=0 is off
    model = up.build(config, "pa(r=8, at=attn, dropout=0.5) + sa(r=8, dropout=0.5) + "
                             "mh_pa(r=8, dropout=0.5)")
    delta = _randomised(up.shape_tree(model, "delta"), seed=4)
    apply = jax.jit(lambda key, det: model.apply(
        {"params": base.params, "delta": delta}, **batch, deterministic=det,
        rngs={"dropout": key}).logits, static_argnums=1)
    keys = [jax.random.key(i, impl="rbg") for i in (0, 1)]  # compiles 4x faster on CPU
    eval_a, eval_b = apply(keys[0], True), apply(keys[1], True)
    train_a, train_b = apply(keys[0], False), apply(keys[1], False)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert np.abs(np.asarray(train_a) - np.asarray(eval_a)).max() > 1e-3
    assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3


# --------------------------------------------------------------------------- reference in torch
def _hook_attention(attn, out_dense, store, fn, sequential):
    """The reference's change to one attention module: a parallel term fn(x) added to the
    concatenated heads before W_o (x = the attention's hidden_states input), or a sequential
    adapter o <- o + fn(o) after W_o."""
    def keep_input(module, args, kwargs):
        store["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    handles = [attn.register_forward_pre_hook(keep_input, with_kwargs=True)]
    if sequential:
        handles.append(out_dense.register_forward_hook(lambda m, a, out: out + fn(out)))
    else:
        handles.append(out_dense.register_forward_pre_hook(
            lambda m, a: (a[0] + fn(store["x"]),) + tuple(a[1:])))
    return handles


def _torch_adapter(v, ln):
    t = {k: torch.tensor(np.asarray(x)) for k, x in v.items()}

    def fn(x):  # Adapter_Layer.forward(x, add_residual=False), eval mode, s=1
        if ln == "in":
            x = torch.nn.functional.layer_norm(x, x.shape[-1:], t["ln_in_scale"],
                                               t["ln_in_bias"], 1e-5)
        down = torch.relu(x @ t["down_kernel"] + t["down_bias"])
        return down @ t["up_kernel"] + t["up_bias"]
    return fn


def _torch_mh(v, q_proj, heads, roberta):
    """BartAttention 'cross_attn_relu': LN -> q_proj (unscaled) -> q P_k^T -> ReLU -> P_v.
    RobertaSelfAttention: the attention's query (no LN), q P_k^T / sqrt(d_h) -> ReLU -> P_v."""
    t = {k: torch.tensor(np.asarray(x)) for k, x in v.items()}
    p_k, p_v = t["p_k"].permute(1, 0, 2), t["p_v"].permute(1, 0, 2)  # [H, r, d_h]

    def fn(x):
        b, length, d = x.shape
        if not roberta:
            x = torch.nn.functional.layer_norm(x, (d,), t["ln_in_scale"], t["ln_in_bias"], 1e-5)
        q = q_proj(x).view(b, length, heads, d // heads).transpose(1, 2)  # [B, H, T, d_h]
        logits = q @ p_k.transpose(-1, -2)
        if roberta:
            logits = logits / np.sqrt(d // heads)
        out = torch.relu(logits) @ p_v  # dropout: eval mode
        return out.transpose(1, 2).reshape(b, length, d)
    return fn


def _sites(kind, torch_model):
    """(delta path, torch attention module, its W_o, its W_q) of every attention."""
    if kind == "bart":
        sites = []
        for stack, layers in (("encoder", torch_model.model.encoder.layers),
                              ("decoder", torch_model.model.decoder.layers)):
            for i, layer in enumerate(layers):
                names = ("self_attn", "encoder_attn") if stack == "decoder" else ("self_attn",)
                for name in names:
                    attn = getattr(layer, name)
                    sites.append(((stack, f"layers_{i}", name), attn, attn.out_proj,
                                  attn.q_proj))
        return sites
    return [((f"encoder_layer_{i}", "attention"), layer.attention.self,
             layer.attention.output.dense, layer.attention.self.query)
            for i, layer in enumerate(torch_model.encoder.layer)]


@pytest.mark.parametrize("kind", ["bart", "roberta"])
@pytest.mark.parametrize("method", ["pa(r=4, at=attn)", "sa(r=4, at=attn)", "mh_pa(r=5)"])
def test_attention_adapters_match_the_reference_model(kind, method, tiny_checkpoint):
    """Our model with a random Δh == transformers' PyTorch model with the reference's
    attention adapter (LayerNorm on its input by default) or multi-head adapter hooked in."""
    base = up.load_pretrained(tiny_checkpoint(kind, layers=1))
    rng = np.random.default_rng(0)
    ids, mask = padded_batch(rng, 3, 9, 99, pad=1)
    batch = dict(input_ids=ids, attention_mask=mask)
    if kind == "bart":
        dec, dec_mask = padded_batch(rng, 3, 6, 99, pad=1)
        batch.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    model = up.build(base.config, method)
    # the tiny base's W_q (std 0.02) makes small queries: larger P_k, P_v for MH PA
    delta = _randomised(up.shape_tree(model, "delta"), seed=5,
                        std=2.0 if method.startswith("mh_pa") else 0.3)
    out = model.apply({"params": base.params, "delta": delta}, **batch)
    ours = np.asarray(out.logits if kind == "bart" else out.last_hidden_state)

    reference = copy.deepcopy(tiny_hf_model(kind, layers=1))
    handles = []
    flat = traverse_util.flatten_dict(delta)
    heads = model.cfg.heads
    for path, attn, out_dense, q_proj in _sites(kind, reference):
        sub = {k[-1]: x for k, x in flat.items() if k[:len(path)] == path}
        if method.startswith("mh_pa"):
            fn = _torch_mh(sub, q_proj, heads, roberta=kind == "roberta")
        else:
            fn = _torch_adapter(sub, ln="in")
        handles += _hook_attention(attn, out_dense, {}, fn,
                                   sequential=method.startswith("sa"))
    with torch.no_grad():
        ref = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    for h in handles:
        h.remove()
    theirs = (ref.logits if kind == "bart" else ref.last_hidden_state).numpy()
    keep = (batch.get("decoder_attention_mask", mask))[..., None].astype(bool)
    np.testing.assert_allclose(np.where(keep, ours, 0), np.where(keep, theirs, 0), atol=1e-4,
                               rtol=0)
    with torch.no_grad():
        plain = tiny_hf_model(kind, layers=1)(
            **{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    plain = (plain.logits if kind == "bart" else plain.last_hidden_state).numpy()
    assert np.abs(np.where(keep, theirs - plain, 0)).max() > 1e-2  # the Δh is not negligible


# --------------------------------------------------------------------------- BitFit
def test_bitfit_count_on_bart_large_leaves_final_logits_bias_out(capsys):
    """By hand, bart-large (d=1024, FFN 4096, 12+12 layers, no final stack LayerNorms):
    encoder layer: q,k,v,o 4·1024 + self-attn LN 1024 + fc1 4096 + fc2 1024 + final LN 1024
    = 11,264; decoder layer: 2·(4·1024 + 1024) + 4096 + 1024 + 1024 = 16,384;
    12·11,264 + 12·16,384 + layernorm_embedding 2·1024 = 333,824
    (final_logits_bias, 50,265, is a buffer in the reference: not trained)."""
    from unified_petl.cli import main

    main(["count", "--base", "bart-large", "--method", "bitfit", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["trained"] == result["stored"] == result["paper"] == 333_824
    assert result["per_axis"]["masked@params"]["trained"] == 333_824
    assert abs(result["percent_paper"] - 0.1) <= 0.15
    with_buffer = up.count_for("bart-large", "masked(pattern='.*bias')")["trained"]
    assert with_buffer == 333_824 + 50_265


def test_bitfit_leaves_and_named_final_logits_bias(tiny_checkpoint):
    base = up.load_pretrained(tiny_checkpoint("bart", layers=1))
    params = traverse_util.flatten_dict(base.params, sep="/")

    def offsets(method):
        return set(traverse_util.flatten_dict(up.shape_tree(up.build(base.config, method),
                                                            "delta"), sep="/"))

    bitfit = offsets("bitfit")
    assert "final_logits_bias" in params and "final_logits_bias" not in bitfit
    assert bitfit == {p for p in params if p.endswith("bias") and p != "final_logits_bias"}
    assert offsets("masked(pattern='final_logits_bias')") == {"final_logits_bias"}
    assert "final_logits_bias" in offsets("masked(pattern='.*bias')")
