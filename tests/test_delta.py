"""The Δh design space: zero-effect inits, the unified-view identity, isolation of Δh,
the paper's parameter counts, eject, LoRA merge, validation."""
import jax
import jax.numpy as jnp
import optax
import numpy as np
import pytest
from flax import traverse_util

import unified_petl as up
from conftest import padded_batch
from unified_petl.delta.budget import count_for

# every preset string of REFERENCE.md at tiny sizes
PRESETS = ["bitfit", "masked(pattern='.*(fc1|intermediate)/kernel')", "prompt(l=3)",
           "prefix(l=3)", "prefix(l=3, mlp=False)", "prefix_gated(l=3)", "prefix_nogate(l=3)",
           "lora(r=4)", "lora(r=4, alpha=16, at=ffn)", "houlsby(r=4)", "pfeiffer(r=4)",
           "pa(r=4)", "pa(r=4, at=attn)", "sa(r=4, at=attn, ln=in)", "scaled_pa(r=4, s=4)",
           "scaled_pa(r=4, learn_s=true)", "mh_pa(r=4)", "mam(l=3, r=8, s=4)", "full",
           "ia3", "dora(r=4, at=all)", "unipelt(l=3, r=4, adapter_r=4)"]
# inits that leave the model exactly as the base model
ZERO_EFFECT = ["bitfit", "masked(pattern='.*bias')", "lora(r=4)", "lora(r=4, at=ffn)",
               "scaled_pa(r=4)", "pa(r=4, at=attn, init=lora)", "houlsby(r=4, init=lora)",
               "mh_pa(r=4, init=lora)", "pa(r=4, ln=in, init=lora)", "ia3", "rslora(r=4)"]


def _setup(kind, tiny_checkpoint, seed=0):
    folder = tiny_checkpoint(kind, layers=1)  # one layer: fast compiles
    base = up.load_pretrained(folder)
    rng = np.random.default_rng(seed)
    ids, mask = padded_batch(rng, 3, 9, 99, pad=1)
    batch = dict(input_ids=ids, attention_mask=mask)
    if kind != "roberta":
        dec, dec_mask = padded_batch(rng, 3, 6, 99, pad=1)
        batch.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    return base, batch


def _forward(base, method, batch, delta=None, params=None):
    model = up.build(base.config, method)
    if delta is None:
        delta = up.init_delta(model, jax.random.key(0), batch, params=base.params)
    variables = {"params": base.params if params is None else params, "delta": delta}
    return jax.jit(lambda v, b: _output(model.apply(v, **b)))(variables, batch), model, delta


def _output(out):
    """LM logits of (m)BART, the encoder output of RoBERTa (built without a head here)."""
    return out.logits if out.logits is not None else out.last_hidden_state


@pytest.mark.parametrize("kind,method", [(k, m) for k in ("bart", "roberta") for m in ZERO_EFFECT]
                         + [("mbart", "scaled_pa(r=4)"), ("mbart", "pa(r=4, ln=in, init=lora)")])
def test_zero_effect_inits_reproduce_the_base_model(kind, method, tiny_checkpoint):
    # eager (unjitted) applies: bitwise equality, free of XLA fusion differences
    base, batch = _setup(kind, tiny_checkpoint)
    reference = _output(up.build(base.config, "none").apply({"params": base.params}, **batch))
    model = up.build(base.config, method)
    delta = up.init_delta(model, jax.random.key(0), batch, params=base.params)
    assert jax.tree_util.tree_leaves(delta)
    output = _output(model.apply({"params": base.params, "delta": delta}, **batch))
    np.testing.assert_array_equal(output, reference)


@pytest.mark.parametrize("kind", ["bart", "mbart", "roberta"])
def test_prefix_concat_equals_gated_heads(kind, tiny_checkpoint):
    """Paper eq. 5-7: concatenating P_k, P_v to K, V == (1-λ)·Attn + λ·softmax(qP_k^T)P_v."""
    base, batch = _setup(kind, tiny_checkpoint)
    concat, model, delta = _forward(base, "prefix(l=5, mlp=False)", batch)
    # large prefixes so that λ is far from 0 and the identity is not trivially met
    delta = jax.tree_util.tree_map(lambda x: x * 50.0, delta)
    concat, _, _ = _forward(base, "prefix(l=5, mlp=False)", batch, delta)
    gated, _, _ = _forward(base, "prefix_gated(l=5, mlp=False)", batch, delta)
    ungated, _, _ = _forward(base, "prefix_nogate(l=5, mlp=False)", batch, delta)
    plain, _, _ = _forward(base, "none", batch)
    np.testing.assert_allclose(concat, gated, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(concat) - np.asarray(plain)).max() > 1e-3
    assert np.abs(np.asarray(ungated) - np.asarray(gated)).max() > 1e-4


def test_gated_prefix_attention_dropout_is_unbiased():
    """The explicit gated form drops attention probabilities like the concatenated form: the
    output changes with the dropout key, and its mean over keys is the deterministic output
    (the attention output is linear in the probabilities)."""
    from unified_petl.delta.prefix import gated_prefix_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 2, 4)) for i in range(3))
    p_k, p_v = (jax.random.normal(jax.random.key(i), (5, 2, 4)) for i in (3, 4))
    bias = jnp.zeros((2, 1, 3, 3))
    exact, lam = gated_prefix_attention(q, k, v, bias, p_k, p_v, scale=0.5)
    sample = jax.vmap(lambda key: gated_prefix_attention(q, k, v, bias, p_k, p_v, scale=0.5,
                                                         dropout_rng=key, dropout=0.3)[0])
    outs = sample(jax.random.split(jax.random.key(9), 20000))
    assert float(jnp.abs(outs[0] - exact).max()) > 1e-2
    np.testing.assert_allclose(outs.mean(0), exact, atol=0.03)
    assert 0.0 < float(lam.min()) and float(lam.max()) < 1.0


def _loss(model, params, batch):
    """Squared distance to a fixed random target (a LayerNorm output has a constant norm)."""
    def fn(delta):
        out = _output(model.apply({"params": params, "delta": delta}, **batch))
        target = jax.random.normal(jax.random.key(7), out.shape)
        return jnp.mean((out - target) ** 2)
    return fn


@pytest.mark.parametrize("kind", ["bart", "roberta"])
@pytest.mark.parametrize("method", PRESETS)
def test_each_preset_changes_outputs_only_through_its_own_variables(kind, method,
                                                                    tiny_checkpoint):
    if kind == "roberta" and method.startswith("prompt"):
        pytest.skip("prompt tuning is refused on encoder-only models")
    base, batch = _setup(kind, tiny_checkpoint)
    frozen_before = jax.tree_util.tree_map(np.array, base.params)
    model = up.build(base.config, method)
    delta = up.init_delta(model, jax.random.key(1), batch, params=base.params)
    if model.method.full:  # full fine-tuning: the step differentiates params themselves
        assert not jax.tree_util.tree_leaves(delta)
        return
    loss_fn = _loss(model, base.params, batch)

    @jax.jit
    def step(delta):  # one program: gradient, a step, the loss before and after
        loss, grads = jax.value_and_grad(loss_fn)(delta)
        norm = optax.tree.norm(grads)  # a unit-length step, whatever the gradient scale
        stepped = jax.tree_util.tree_map(lambda d, g: d - g / norm, delta, grads)
        return loss, grads, loss_fn(stepped)

    loss, grads, loss_after = step(delta)
    # the gradient tree is the Δh tree: nothing for the frozen weights
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(delta)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)) > 0
    assert float(loss_after) != float(loss)  # the Δh variables move the output
    for a, b in zip(jax.tree_util.tree_leaves(frozen_before),
                    jax.tree_util.tree_leaves(base.params)):
        np.testing.assert_array_equal(a, b)


def test_masked_offsets_cover_exactly_the_matching_leaves(tiny_checkpoint):
    base, batch = _setup("bart", tiny_checkpoint)
    model = up.build(base.config, "bitfit")
    delta = up.init_delta(model, jax.random.key(0), batch, params=base.params)
    params = traverse_util.flatten_dict(base.params, sep="/")
    offsets = traverse_util.flatten_dict(delta, sep="/")
    # every bias but BART's final_logits_bias (a buffer in the reference, never trained)
    assert set(offsets) == {p for p in params if p.endswith("bias") and p != "final_logits_bias"}
    for path, value in offsets.items():
        assert value.shape == params[path].shape


PAPER = [  # (base, method, percent of the paper's tables)
    ("bart-large", "prefix(l=200)", 3.6), ("bart-large", "mam(l=30, r=512, s=4)", 6.7),
    ("bart-large", "pa(r=1024, at=ffn)", 12.3), ("bart-large", "pfeiffer(r=600)", 7.2),
    ("bart-large", "lora(r=102, alpha=408, at=ffn)", 6.1), ("bart-large", "bitfit", 0.1),
    ("bart-large", "pa(r=30, at=attn) + pa(r=512, at=ffn)", 6.7),
    ("roberta-base", "mam(l=16, r=16, s=2)", 0.5), ("roberta-base", "lora(r=16, alpha=32)", 0.5),
]


@pytest.mark.parametrize("base,method,percent", PAPER)
def test_count_reproduces_the_paper(base, method, percent):
    result = count_for(base, method)
    assert abs(result["percent_paper"] - percent) <= 0.15, result["percent_paper"]
    assert result["trained"] >= result["stored"] >= result["paper"]


def test_stored_count_is_the_ejected_tree(tiny_checkpoint):
    base, batch = _setup("bart", tiny_checkpoint)
    method = "mam(l=3, r=8)"
    logits, model, delta = _forward(base, method, batch)
    result = up.count(base.config, method)
    ejected_method, ejected = up.eject(model.method, delta)
    sizes = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(t))
    assert result["trained"] == sizes(delta)
    assert result["stored"] == sizes(ejected) < sizes(delta)
    assert not ejected_method.prefix.mlp
    after, _, _ = _forward(base, ejected_method, batch, ejected)
    np.testing.assert_allclose(after, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["bart", "roberta"])
def test_merged_lora_equals_unmerged(kind, tiny_checkpoint):
    base, batch = _setup(kind, tiny_checkpoint)
    method = "lora(r=4, at=attn) + pa(r=4)"
    _, model, delta = _forward(base, method, batch)
    # make LoRA non-zero: B starts at 0
    delta = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.3 * jax.random.normal(jax.random.key(len(p)), x.shape)
        if p[-1].key == "lora_b" else x, delta)
    unmerged, _, _ = _forward(base, model.method, batch, delta)
    merged_method, merged_params, rest = up.merge_lora(model.method, base.params, delta)
    assert not merged_method.of("lora") and merged_method.adapters("ffn")
    merged, _, _ = _forward(base, merged_method, batch, rest, params=merged_params)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(merged) - np.asarray(_forward(base, "pa(r=4)", batch, rest)[0])
                  ).max() > 1e-4  # the merge really moved the weights
    restored = up.unmerge_lora(model.method, merged_params, delta)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(base.params)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_merge_refuses_nonlinear_forms(tiny_checkpoint):
    base, batch = _setup("roberta", tiny_checkpoint)
    _, model, delta = _forward(base, "pa(r=4)", batch)
    with pytest.raises(up.SpecError, match="non-linear"):
        up.merge_lora(model.method, base.params, delta)


@pytest.mark.parametrize("text,message", [
    ("lora(r=0)", "must be an integer >= 1"),
    ("pa(r=-3)", "must be an integer >= 1"),
    ("prefix(l=0)", "must be an integer >= 1"),
    ("adapterz(r=4)", "unknown method 'adapterz'"),
    ("lora(r=4, rank=3)", "unknown argument"),
    ("pa(r=4, at=embeddings)", "at must be one of attn, ffn"),
    ("pa(r=4, init=xavier)", "init must be one of bert, lora"),
    ("lora(r=4, at=zz)", "unknown LoRA targets"),
    ("prefix(l=4) + prefix(l=8)", "more than one prefix"),
    ("full + lora(r=4)", "combine no other term"),
    ("masked(pattern='(')", "is not a regex"),
    ("lora(r=4", "cannot parse"),
])
def test_nonsense_is_refused_with_one_line(text, message):
    with pytest.raises(up.SpecError, match=message) as err:
        up.parse_method(text)
    assert "\n" not in str(err.value)


def test_gating_needs_a_prefix_softmax():
    with pytest.raises(up.SpecError, match="gated composition needs a prefix softmax"):
        up.Term(form="adapter", at="ffn", composition="gated", size=4).validate()


def test_prompt_on_encoder_only_is_refused(tiny_checkpoint):
    base = up.load_pretrained(tiny_checkpoint("roberta"))
    with pytest.raises(up.SpecError, match="prompt tuning is implemented for the"):
        up.build(base.config, "prompt(l=4)")


def test_method_round_trips_through_dict():
    method = up.parse_method("mam(l=30, r=512, s=4) + lora(r=8, at=ffn)")
    assert up.Method.from_dict(method.to_dict()) == method
