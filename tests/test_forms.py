"""Points of the design space beyond the paper: IA3, DoRA and rsLoRA against HF PEFT on the
same PyTorch model, learned gates (UniPELT) against its equations written out on transformers'
PyTorch model, merging every mergeable term, counting and refusals.

Every Δh weight is randomised before a comparison (zero or ones inits would make a parity
test pass whatever the code does)."""
import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers as tf
from flax import traverse_util
from peft import IA3Config, LoraConfig, get_peft_model
from peft.tuners.ia3 import IA3Layer
from peft.tuners.lora import LoraLayer

import unified_petl as up
from conftest import padded_batch, tiny_hf_model
from unified_petl.delta.budget import count, count_for
from unified_petl.models.loading import hf_key

TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """kind -> (folder, Base, batch) for a one-layer tiny BART or RoBERTa whose biases are
    random too (transformers initialises them to 0, which would hide a bias that IA3 or a
    merge forgets to scale)."""
    cache = {}

    def make(kind):
        if kind not in cache:
            model = tiny_hf_model(kind, layers=1)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0.0, 0.5)
            folder = str(tmp_path_factory.mktemp(f"forms_{kind}"))
            model.save_pretrained(folder)
            rng = np.random.default_rng(0)
            ids, mask = padded_batch(rng, 3, 9, 99, pad=1)
            batch = dict(input_ids=ids, attention_mask=mask)
            if kind == "bart":
                dec, dec_mask = padded_batch(rng, 3, 6, 99, pad=1)
                batch.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
            cache[kind] = (folder, up.load_pretrained(folder, tokenizer=False), batch)
        return cache[kind]

    return make


def _torch_model(kind, folder):
    cls = tf.BartForConditionalGeneration if kind == "bart" else tf.RobertaModel
    return cls.from_pretrained(folder, attn_implementation="eager").eval()


def _torch_out(kind, model, batch):
    with torch.no_grad():
        out = model(**{k: torch.tensor(np.asarray(v), dtype=torch.long)
                       for k, v in batch.items()})
    return (out.logits if kind == "bart" else out.last_hidden_state).numpy()


def _ours(base, method, batch, delta, params=None):
    """Our output, applied eagerly: op by op, each op compiled once for the whole session,
    where a jit would compile every method's model anew (minutes on a shared 2-core CPU)."""
    model = up.build(base.config, method)
    out = model.apply({"params": base.params if params is None else params, "delta": delta},
                      **batch)
    return np.asarray(out.logits if out.logits is not None else out.last_hidden_state)


def _keep(kind, batch):
    """Rows that are not padding (padded rows are don't-care in either model)."""
    mask = batch["decoder_attention_mask" if kind == "bart" else "attention_mask"]
    return mask[..., None].astype(bool)


def _close(kind, batch, ours, theirs, tol=TOL):
    keep = _keep(kind, batch)
    error = float(np.abs(np.where(keep, ours - theirs, 0)).max())
    assert error <= tol, error
    return error


def _moved(kind, batch, ours, base_out):
    """The Δh changes the output far beyond the tolerance (the comparison could fail)."""
    assert np.abs(np.where(_keep(kind, batch), ours - base_out, 0)).max() > 100 * TOL


def _init(base, method, batch, seed=0):
    """(model, a random Δh of its shapes): no init is compiled, and no value is an init's:
    ones and zeros inits (IA3 l, LoRA B, DoRA's m = ||W||) would let a wrong formula pass."""
    model = up.build(base.config, method)
    shapes = traverse_util.flatten_dict(up.shape_tree(model, "delta"))
    params = traverse_util.flatten_dict(base.params)
    rng = np.random.default_rng(100 + seed)
    delta = {}
    for path, x in sorted(shapes.items()):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        if path[-1] == "ia3_l":  # multiplicative: around its init, 1
            delta[path] = 1.0 + 0.4 * noise
        elif path[-1] == "lora_magnitude":  # around ||W|| per output unit
            norm = np.linalg.norm(params[path[:-1] + ("kernel",)], axis=0)
            delta[path] = norm * (1.0 + 0.4 * noise)
        else:
            delta[path] = 0.3 * noise
    return model, traverse_util.unflatten_dict(delta)


def _torch_name(kind, site):
    """Our Dense path -> the transformers module name in the PyTorch model."""
    name = hf_key(tuple(site) + ("kernel",), kind == "bart")[: -len(".weight")]
    return ("model." + name) if kind == "bart" else name


def _sites(delta, leaf):
    return sorted({p[:-1] for p in traverse_util.flatten_dict(delta) if p[-1] == leaf})


def _set(param, value):
    with torch.no_grad():
        param.copy_(torch.tensor(np.asarray(value)).reshape(param.shape))


# --- IA3, DoRA, rsLoRA against PEFT -----------------------------------------------------------

IA3_CASES = [
    ("bart", "ia3", "ours"),  # the paper's points: k, v outputs, fc2's input
    ("roberta", "ia3", "ours"),
    ("bart", "ia3(at=q+v+fc2)", "peft"),  # PEFT's default targets for BART ...
    ("roberta", "ia3(at=k+v+o+fc2, inputs=o+fc2)", "peft"),  # ... and RoBERTa
]


@pytest.mark.parametrize("kind,method,targets", IA3_CASES)
def test_ia3_equals_peft(kind, method, targets, setup):
    folder, base, batch = setup(kind)
    model, delta = _init(base, method, batch)
    term = model.method.terms[0]
    sites = _sites(delta, "ia3_l")
    names = {_torch_name(kind, s): s for s in sites}
    inputs = [n for n, s in names.items() if _target(s) in term.input_targets]
    if targets == "ours":
        config = IA3Config(target_modules=list(names), feedforward_modules=inputs)
    else:  # PEFT picks its defaults for the model type
        config = IA3Config()
    peft_model = get_peft_model(_torch_model(kind, folder), config)
    body = peft_model.base_model.model
    wrapped = {n: m for n, m in body.named_modules() if isinstance(m, IA3Layer)}
    assert set(wrapped) == set(names)  # the same projections, none left at its init
    for name, module in wrapped.items():
        site = names[name]
        assert module.is_feedforward == (name in inputs)
        _set(module.ia3_l["default"], traverse_util.flatten_dict(delta)[site + ("ia3_l",)])
    ours = _ours(base, method, batch, delta)
    error = _close(kind, batch, ours, _torch_out(kind, peft_model, batch))
    _moved(kind, batch, ours, _ours(base, "none", batch, {}))
    print(f"{kind} {method}: max |ours - PEFT| = {error:.2e}")


def _target(site):
    from unified_petl.models.layers import projection_target

    return projection_target(site)


LORA_CASES = [(k, m, peft) for k in ("bart", "roberta") for m, peft in (
    ("rslora(r=4, alpha=8)", dict(r=4, lora_alpha=8, use_rslora=True)),
    ("dora(r=4, alpha=8)", dict(r=4, lora_alpha=8, use_dora=True)),
    ("dora(r=4, alpha=6, at=all, rslora=true)",
     dict(r=4, lora_alpha=6, use_dora=True, use_rslora=True)))]


@pytest.mark.parametrize("kind,method,peft_options", LORA_CASES)
def test_lora_variants_equal_peft(kind, method, peft_options, setup):
    folder, base, batch = setup(kind)
    model, delta = _init(base, method, batch)
    term = model.method.terms[0]
    flat = traverse_util.flatten_dict(delta)
    names = {_torch_name(kind, s): s for s in _sites(delta, "lora_a")}
    config = LoraConfig(target_modules=list(names), lora_dropout=0.0, **peft_options)
    peft_model = get_peft_model(_torch_model(kind, folder), config)
    wrapped = {n: m for n, m in peft_model.base_model.model.named_modules()
               if isinstance(m, LoraLayer)}
    assert set(wrapped) == set(names)
    for name, module in wrapped.items():
        site = names[name]
        assert abs(module.scaling["default"] - term.scale) < 1e-12
        _set(module.lora_A["default"].weight, flat[site + ("lora_a",)].T)
        _set(module.lora_B["default"].weight, flat[site + ("lora_b",)].T)
        if term.dora:
            _set(module.lora_magnitude_vector["default"].weight, flat[site + ("lora_magnitude",)])
    ours = _ours(base, method, batch, delta)
    error = _close(kind, batch, ours, _torch_out(kind, peft_model, batch))
    _moved(kind, batch, ours, _ours(base, "none", batch, {}))
    print(f"{kind} {method}: max |ours - PEFT| = {error:.2e}")


def test_dora_and_ia3_start_as_the_base_model(setup):
    _, base, batch = setup("bart")
    method = "ia3 + dora(r=4, at=q+o+fc1)"
    model = up.build(base.config, method)
    delta = up.init_delta(model, jax.random.key(0), batch, params=base.params)
    np.testing.assert_allclose(_ours(base, method, batch, delta),
                               _ours(base, "none", batch, {}), atol=1e-6, rtol=0)


# --- learned gates: UniPELT's equations on the PyTorch model ----------------------------------

def _sigmoid_gate(x, kernel, bias):
    """G = σ(x W_g + b_g) [..., 1] in torch from our [d, 1] kernel."""
    return torch.sigmoid(x @ torch.tensor(np.asarray(kernel)) + torch.tensor(np.asarray(bias)))


class _GatedLoRA(torch.nn.Module):
    """UniPELT's LoRA: y = W x + b + G_L(x) · s · B A x."""

    def __init__(self, linear, a, b, scale, kernel, bias):
        super().__init__()
        self.linear, self.scale = linear, scale
        self.a, self.b = torch.tensor(np.asarray(a)), torch.tensor(np.asarray(b))
        self.kernel, self.bias = kernel, bias

    def forward(self, x):
        gate = _sigmoid_gate(x, self.kernel, self.bias)
        return self.linear(x) + gate * self.scale * (x @ self.a @ self.b)


class _GatedAdapter(torch.nn.Module):
    """UniPELT's adapter after the FFN projection: h_F + G_A(h_F) · W_up ReLU(W_down h_F)."""

    def __init__(self, linear, v):
        super().__init__()
        self.linear, self.v = linear, {k: torch.tensor(np.asarray(x)) for k, x in v.items()}

    def forward(self, x):
        h = self.linear(x)
        v = self.v
        up_ = torch.relu(h @ v["down_kernel"] + v["down_bias"]) @ v["up_kernel"] + v["up_bias"]
        return h + _sigmoid_gate(h, v["gate_kernel"], v["gate_bias"]) * up_


def _gated_prefix_attention(module, query, key, value, attention_mask, scaling=None,
                            dropout=0.0, **kwargs):
    """softmax(q_t [G_t P_k; K]^T) [G_t P_v; V] for every query t, G_t = σ(W_g x_t + b_g) from
    the attention's input x (UniPELT's G_P on the prefix vectors), written per query."""
    p_k, p_v, kernel, bias = module._unipelt_prefix
    gate = _sigmoid_gate(module._unipelt_input, kernel, bias)[..., 0]  # [B, T]
    g = gate[:, None, :, None]  # per query row
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask
    p_logits = torch.einsum("bhtd,hld->bhtl", query, p_k) * scaling * g
    probs = torch.softmax(torch.cat([p_logits, logits], dim=-1), dim=-1)
    l = p_k.shape[1]
    out = torch.einsum("bhtl,hld->bhtd", probs[..., :l] * g, p_v)
    out = out + torch.matmul(probs[..., l:], value)
    return out.transpose(1, 2).contiguous(), probs


def _remember_input(module, args, kwargs):
    module._unipelt_input = args[0] if args else kwargs["hidden_states"]


def _unipelt_torch(kind, folder, delta, lora_scale, monkeypatch):
    """The tiny PyTorch model with UniPELT's three gated submodules written out, holding our
    (random) Δh values."""
    seq2seq = kind == "bart"
    model = _torch_model(kind, folder)
    flat = traverse_util.flatten_dict(delta)
    for site in _sites(delta, "lora_a"):  # gated LoRA on W_q, W_v
        parent, child = _torch_name(kind, site).rsplit(".", 1)
        holder = model.get_submodule(parent)
        setattr(holder, child, _GatedLoRA(getattr(holder, child), flat[site + ("lora_a",)],
                                          flat[site + ("lora_b",)], lora_scale,
                                          flat[site + ("lora_gate_kernel",)],
                                          flat[site + ("lora_gate_bias",)]))
    for site in _sites(delta, "gate_kernel"):  # gated adapter after the FFN's projection
        values = {k[-1]: v for k, v in flat.items() if k[:-1] == site}
        layer = site[:-1]
        fc2 = layer + (("fc2",) if seq2seq else ("output",))
        parent, child = _torch_name(kind, fc2).rsplit(".", 1)
        holder = model.get_submodule(parent)
        setattr(holder, child, _GatedAdapter(getattr(holder, child), values))
    heads = model.config.encoder_attention_heads if seq2seq else model.config.num_attention_heads
    for site in _sites(delta, "prefix_gate_kernel"):  # gated prefixes in every attention
        name = _torch_name(kind, site) + ("" if seq2seq else ".self")
        attention = model.get_submodule(name)
        layer = int(site[-2].split("_")[-1])
        if seq2seq:
            kind_of = {"self_attn": "encoder" if site[0] == "encoder" else "decoder",
                       "encoder_attn": "cross"}[site[-1]]
            kv = flat[(site[0], f"prefix_{kind_of}", "kv")][layer]
        else:
            kv = flat[("prefix_encoder", "kv")][layer]
        l, d = kv.shape[1:]
        def split(p):  # [l, d] -> [H, l, d_h]
            return torch.tensor(np.asarray(p)).reshape(l, heads, d // heads).transpose(0, 1)

        attention._unipelt_prefix = (split(kv[0]), split(kv[1]),
                                     flat[site + ("prefix_gate_kernel",)],
                                     flat[site + ("prefix_gate_bias",)])
        attention.register_forward_pre_hook(_remember_input, with_kwargs=True)
    modeling = tf.models.bart.modeling_bart if seq2seq else tf.models.roberta.modeling_roberta
    monkeypatch.setattr(modeling, "eager_attention_forward", _gated_prefix_attention)
    return model


@pytest.mark.parametrize("kind", ["bart", "roberta"])
def test_unipelt_equals_the_papers_equations(kind, setup, monkeypatch):
    folder, base, batch = setup(kind)
    method = "unipelt(l=3, r=4, adapter_r=5, mlp=false)"
    model, delta = _init(base, method, batch)
    lora = model.method.of("lora")[0]
    assert lora.learn_gate and lora.scale == 1.0 and lora.targets == ("q", "v")
    assert all(t.learn_gate for t in model.method.terms)
    ours = _ours(base, method, batch, delta)
    theirs = _torch_out(kind, _unipelt_torch(kind, folder, delta, lora.scale, monkeypatch),
                        batch)
    error = _close(kind, batch, ours, theirs)
    _moved(kind, batch, ours, _ours(base, "none", batch, {}))
    print(f"{kind} {method}: max |ours - equations| = {error:.2e}")
    # the gates matter: the same Δh without them is another function
    ungated = _ours(base, "prefix(l=3, mlp=false) + lora(r=4, alpha=4) + sa(r=5, ln=none, "
                    "dropout=0)", batch, delta_without_gates(delta))
    assert np.abs(np.where(_keep(kind, batch), ungated - ours, 0)).max() > 1e-3


def delta_without_gates(delta):
    flat = traverse_util.flatten_dict(delta)
    return traverse_util.unflatten_dict({p: v for p, v in flat.items()
                                         if not p[-1].endswith(("gate_kernel", "gate_bias"))})


GATED = ["lora(r=4, learn_gate=true)", "pa(r=4, learn_gate=true)",
         "sa(r=4, at=attn, learn_gate=true)", "mh_pa(r=4, learn_gate=true)",
         "houlsby(r=4, learn_gate=true)", "prefix(l=3, mlp=false, learn_gate=true)"]


@pytest.mark.parametrize("method", GATED)
def test_an_open_gate_is_the_ungated_term_a_closed_one_removes_it(method, setup):
    """G = σ(b_g) with W_g = 0: b_g = +30 gives the term without its gate, b_g = -30 the base
    model (prefixes: scaled to 0 they still take softmax mass, so only the open gate)."""
    _, base, batch = setup("bart")
    _, delta = _init(base, method, batch)
    flat = traverse_util.flatten_dict(delta)

    def gate_bias(b):
        return traverse_util.unflatten_dict({
            p: (np.full_like(v, b) if p[-1].endswith("gate_bias") else
                np.zeros_like(v) if p[-1].endswith("gate_kernel") else v)
            for p, v in flat.items()})

    ungated_method = method.replace(", learn_gate=true", "")
    ungated = _ours(base, ungated_method, batch, delta_without_gates(delta))
    np.testing.assert_allclose(_ours(base, method, batch, gate_bias(30.0)), ungated,
                               atol=TOL, rtol=0)
    if not method.startswith("prefix"):
        np.testing.assert_allclose(_ours(base, method, batch, gate_bias(-30.0)),
                                   _ours(base, "none", batch, {}), atol=TOL, rtol=0)


def test_cached_generation_equals_teacher_forcing(setup):
    """Beam search with the KV cache (gates per decoded position, beams folded into the
    cross-attention's query axis, IA3-scaled keys and values in the cache, DoRA) scores what
    one full forward pass scores."""
    _, base, batch = setup("bart")
    method = "unipelt(l=3, r=4, adapter_r=4, mlp=false) + ia3(at=k+fc2) + dora(r=4, at=o)"
    model, delta = _init(base, method, batch)
    variables = {"params": base.params, "delta": delta}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    seqs, scores = up.generate(model, variables, ids, mask, config=base, num_beams=3,
                               max_length=7, length_penalty=1.0, forced_bos_token_id=None,
                               forced_eos_token_id=None, return_scores=True)
    logits = model.apply(variables, ids, mask, seqs[:, :-1]).logits
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    tokens = seqs[:, 1:]
    picked = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    full = []
    for b in range(len(seqs)):
        eos = np.flatnonzero(tokens[b] == 2)
        n = eos[0] + 1 if len(eos) else tokens.shape[1]
        full.append(picked[b, :n].sum() / n)
    np.testing.assert_allclose(scores, np.array(full), atol=1e-4)


# --- merging -----------------------------------------------------------------------------------

MERGE_CASES = [(k, m) for k in ("bart", "roberta") for m in (
    "lora(r=4, at=q+fc1) + rslora(r=2, at=k+o) + dora(r=4, at=v+fc2) + pa(r=4)",
    "ia3(at=k+v+o+fc2, inputs=o+fc2) + dora(r=4, at=q+fc1)",
    "ia3(at=q+fc1) + lora(r=4, at=v, learn_gate=true)")]


@pytest.mark.parametrize("kind,method", MERGE_CASES)
def test_merged_equals_unmerged(kind, method, setup):
    _, base, batch = setup(kind)
    model, delta = _init(base, method, batch)
    unmerged = _ours(base, model.method, batch, delta)
    merged_method, params, rest = up.merge(model.method, base.params, delta)
    kept = [t for t in model.method.terms if t.form not in ("lora", "ia3") or t.learn_gate]
    assert list(merged_method.terms) == kept
    leaves = {p[-1] for p in traverse_util.flatten_dict(rest)} if rest else set()
    assert not leaves & {"ia3_l", "lora_magnitude"}
    assert ("lora_a" in leaves) == any(t.form == "lora" for t in kept)
    merged = _ours(base, merged_method, batch, rest, params=params)
    error = _close(kind, batch, merged, unmerged)
    print(f"{kind} {method}: max |merged - unmerged| = {error:.2e}")
    _moved(kind, batch, merged, _ours(base, merged_method, batch, rest))  # weights moved


def test_unmerge_restores_lora_and_rslora_and_refuses_dora(setup):
    _, base, batch = setup("roberta")
    model, delta = _init(base, "rslora(r=4) + lora(r=2, at=fc1)", batch)
    _, merged, _ = up.merge_lora(model.method, base.params, delta)
    restored = up.unmerge_lora(model.method, merged, delta)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(base.params)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    dora, dora_delta = _init(base, "dora(r=4)", batch)
    _, merged, _ = up.merge(dora.method, base.params, dora_delta)
    with pytest.raises(up.SpecError, match="cannot be undone") as err:
        up.unmerge_lora(dora.method, merged, dora_delta)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method,message", [
    ("unipelt(l=3, r=4, adapter_r=4)", "learned gate that depends on the input"),
    ("pa(r=4)", "non-linear in h"),
    ("bitfit + ia3", "masked or sparse offset"),
    ("masked(pattern='.*value/kernel') + dora(r=4)", "masked or sparse offset"),
])
def test_merge_refuses_with_one_line(method, message, setup):
    _, base, batch = setup("roberta")
    model, delta = _init(base, method, batch)
    with pytest.raises(up.SpecError, match=message) as err:
        up.merge(model.method, base.params, delta)
    assert "\n" not in str(err.value)


def test_dora_needs_the_pretrained_weights_to_start(setup):
    _, base, batch = setup("roberta")
    with pytest.raises(up.SpecError, match="pass params="):
        up.init_delta(up.build(base.config, "dora(r=4)"), jax.random.key(0), batch)


# --- the spec: options, sums, refusals ----------------------------------------------------------

def test_presets_read_their_options():
    rs = up.parse_method("rslora(r=16, alpha=8)").terms[0]
    assert rs.rslora and rs.scale == 8 / 4 and not rs.dora
    assert up.parse_method("lora(r=16, alpha=8, rslora=true)").terms[0] == rs
    dora = up.parse_method("dora(r=8, at=all)").terms[0]
    assert dora.dora and dora.scale == 2.0 and dora.targets == ("q", "v", "fc1", "fc2")
    ia3 = up.parse_method("ia3").terms[0]
    assert (ia3.composition, ia3.targets, ia3.input_targets) == ("multiply", ("k", "v", "fc2"),
                                                                 ("fc2",))
    assert up.parse_method("ia3(at=k+v+fc2, inputs=none)").terms[0].input_targets == ()
    prefix, lora, adapter = up.parse_method("unipelt").terms
    assert (prefix.size, prefix.mlp_hidden, lora.size, adapter.size) == (10, 512, 8, 48)
    assert adapter.insertion == "sequential" and adapter.at == "ffn"
    summed = up.parse_method("ia3 + prefix(l=4, learn_gate=true) + pfeiffer(r=8)")
    assert [t.form for t in summed.terms] == ["ia3", "prefix", "adapter"]
    assert up.Method.from_dict(summed.to_dict()) == summed
    old = {k: v for k, v in lora.to_dict().items()
           if k not in ("learn_gate", "rslora", "dora", "input_targets")}  # a spec saved before
    # the fields it lacks take their defaults
    assert up.Term.from_dict(old) == dataclasses.replace(lora, learn_gate=False, rslora=False,
                                                         dora=False, input_targets=())


@pytest.mark.parametrize("text,message", [
    ("ia3(s=2)", "unknown argument"),
    ("ia3(at=k+zz)", "unknown IA3 targets"),
    ("ia3(at=k+v, inputs=fc2)", "not among its targets"),
    ("ia3 + lora(r=4, at=k)", "LoRA and IA3 on k"),
    ("ia3 + ia3(at=v)", "two IA3 terms on v"),
    ("dora(r=4, learn_gate=true)", "learn_gate needs plain LoRA"),
    ("lora(r=4, rslora=yes)", "true or false"),
    ("prompt(l=4, learn_gate=true)", "unknown argument"),
    ("unipelt(adapter_r=0)", "must be an integer >= 1"),
])
def test_nonsense_is_refused_with_one_line(text, message):
    with pytest.raises(up.SpecError, match=message) as err:
        up.parse_method(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("term,message", [
    (dict(form="ia3", at="attn", composition="multiply", init="ones", targets=("k",),
          insertion="sequential", scale=2.0), "no scale"),
    (dict(form="ia3", at="attn", composition="add", init="ones", targets=("k",),
          insertion="sequential"), "multiplicative composition"),
    (dict(form="adapter", at="ffn", composition="multiply", size=4), "multiplicative"),
    (dict(form="masked", at="params", pattern=".*bias", learn_gate=True), "learned gate"),
    (dict(form="adapter", at="ffn", size=4, init="ones"), "init=ones"),
    (dict(form="adapter", at="ffn", size=4, dora=True), "options of a LoRA term"),
])
def test_terms_that_make_no_sense_are_refused(term, message):
    with pytest.raises(up.SpecError, match=message) as err:
        up.Term(**term).validate()
    assert "\n" not in str(err.value)


# --- counting -----------------------------------------------------------------------------------

def test_count_follows_the_formulas():
    cfg = count_for("bart-large", "ia3")  # d = 1024, d_ff = 4096, 12 + 12 layers
    d, ffn, attentions, ffns = 1024, 4096, 12 + 2 * 12, 24
    assert cfg["per_axis"]["ia3"] == dict.fromkeys(("trained", "stored", "paper"),
                                                   2 * d * attentions + ffn * ffns)
    dora = count_for("bart-large", "dora(r=16)")["per_axis"]
    assert dora["dora"]["paper"] == dora["dora"]["trained"] == 2 * d * attentions
    assert dora["lora"]["paper"] == 16 * 2 * d * 2 * attentions
    # UniPELT on BERT-base: its parts as the UniPELT paper's Table 1 counts them (prefix
    # 0.17%, LoRA 0.27%, adapter 0.81% incl. biases), plus W_g of the 3 gates per layer
    bert = count(tf.BertConfig(), "unipelt")
    axis = {k: 100 * v["paper"] / bert["base_params"] for k, v in bert["per_axis"].items()}
    assert round(axis["prefix@heads"], 2) == 0.17 and round(axis["lora"], 2) == 0.27
    adapter = bert["per_axis"]["adapter@ffn"]
    assert 2 * 48 * 768 * 12 == adapter["paper"] < adapter["trained"]  # + biases
    assert abs(100 * adapter["trained"] / bert["base_params"] - 0.81) < 0.015
    assert bert["per_axis"]["gate"]["paper"] == 768 * 12 * 4  # prefix, adapter, LoRA q and v


@pytest.mark.parametrize("method", ["ia3", "dora(r=4, at=all)", "rslora(r=4)",
                                    "unipelt(l=3, r=4, adapter_r=4)",
                                    "mh_pa(r=4, learn_gate=true) + ia3(at=fc1)"])
def test_count_is_the_delta_tree(method, setup):
    _, base, batch = setup("bart")
    _, delta = _init(base, method, batch)
    result = up.count(base.config, method)
    sizes = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(delta))
    assert result["trained"] == sizes >= result["paper"] > 0
    assert not [k for k in result["per_axis"] if k.startswith("other")]
