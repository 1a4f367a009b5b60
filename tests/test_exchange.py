"""Δh exchanged with Hugging Face PEFT: our LoRA exported and loaded by
`PeftModel.from_pretrained` gives our logits; a folder PEFT wrote (save_pretrained, random
weights) imported here gives PEFT's logits; what a format cannot hold is refused with one line.
AdapterHub parity needs adapters 1.3 in its own venv: `make check-adapters`
(tests/adapterhub/check_adapters.py); here only its file layout is pinned."""
import json
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import jax.numpy as jnp  # noqa: E402
import transformers as tf  # noqa: E402
from flax import traverse_util  # noqa: E402

import unified_petl as up  # noqa: E402
from unified_petl import cli  # noqa: E402
from unified_petl.exchange import ExchangeError  # noqa: E402

import tiny_runs  # noqa: E402

TOL = 1e-4
NUM_LABELS = 3
RNG = np.random.default_rng(0)
IDS = RNG.integers(3, 99, size=(2, 7))
IDS[1, 5:] = 1  # right padding (pad id 1)
MASK = (IDS != 1).astype(np.int64)
DEC = RNG.integers(3, 99, size=(2, 5))


@pytest.fixture(scope="module")
def bases(tiny_checkpoint):
    """{kind: (folder, Base)}: one-layer tiny BART and RoBERTa (no head: a new one is Δh)."""
    out = {}
    for kind in ("bart", "roberta"):
        folder = tiny_checkpoint(kind, layers=1)
        out[kind] = (folder, up.load_pretrained(folder, tokenizer=False))
    return out


def _model(base, kind, method):
    if kind == "bart":
        return up.build(base.config, method)
    return up.build(base.config, method, num_labels=NUM_LABELS, pretrained_head=False)


def _random_delta(model, seed=0):
    """Every Δh leaf random (zero-initialised LoRA B too, IA3 vectors around 1), so a parity
    test can fail."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(up.shape_tree(model, "delta"))
    return traverse_util.unflatten_dict({
        p: jnp.asarray((p[-1] == "ia3_l") + rng.normal(0, 1.0 if p[-1] == "ia3_l" else 0.3,
                                                        s.shape), jnp.float32)
        for p, s in flat.items()})


def _ours(model, base, delta, kind):
    args = (IDS, MASK, DEC) if kind == "bart" else (IDS, MASK)
    return np.asarray(model.apply({"params": base.params, "delta": delta}, *args).logits)


def _hf(kind, folder, num_labels=NUM_LABELS):
    if kind == "bart":
        return tf.BartForConditionalGeneration.from_pretrained(folder).eval()
    return tf.RobertaForSequenceClassification.from_pretrained(folder,
                                                               num_labels=num_labels).eval()


def _torch_logits(model, kind):
    kw = dict(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK))
    if kind == "bart":
        kw["decoder_input_ids"] = torch.tensor(DEC)
    with torch.no_grad():
        return model(**kw).logits.numpy()


# ------------------------------------------------------------------------- export to PEFT
EXPORTS = [
    # two LoRA terms (other r and alpha: PEFT's rank/alpha patterns), every projection kind
    ("bart", "lora(r=2, at=q+k+v+o, dropout=0.1)+lora(r=3, alpha=1.5, at=fc1+fc2, dropout=0.1)"),
    ("roberta", "lora(r=2, at=q+k+v+o)+lora(r=3, alpha=1.5, at=fc1+fc2)"),
    ("roberta", "rslora(r=4, at=q+v)+rslora(r=2, alpha=3, at=fc2)"),  # use_rslora
    ("bart", "dora(r=2, at=q+v+fc1)"),  # use_dora: the magnitudes too
    ("bart", "ia3"),  # keys, values, the FFN's intermediate activation (fc2's input)
    ("roberta", "ia3(at=k+v+o+fc2, inputs=o+fc2)"),  # PEFT's default targets on RoBERTa
]


@pytest.mark.parametrize("kind,method", EXPORTS)
def test_export_loads_in_peft_with_our_logits(bases, kind, method, tmp_path):
    """Random Δh (a new head on RoBERTa: modules_to_save) exported, loaded by PEFT."""
    folder, base = bases[kind]
    model = _model(base, kind, method)
    delta = _random_delta(model)
    out = str(tmp_path / "peft")
    files = up.export_delta(model, delta, base, out, format="peft")
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = peft.PeftModel.from_pretrained(_hf(kind, folder), out).eval()
    theirs = _torch_logits(loaded, kind)
    assert np.abs(_ours(model, base, delta, kind) - theirs).max() < TOL
    with loaded.disable_adapter():  # the adapter matters far beyond the tolerance
        assert np.abs(_torch_logits(loaded, kind) - theirs).max() > 20 * TOL


# ------------------------------------------------------------------------- import from PEFT
def _peft_folder(kind, folder, out, config):
    """A PEFT adapter written by PEFT itself, every LoRA weight and the head random."""
    torch.manual_seed(1)
    model = peft.get_peft_model(_hf(kind, folder), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name or "ia3_l" in name:
                param.normal_(1.0 if "ia3_l" in name else 0.0, 0.3)
    model.eval().save_pretrained(out)
    return model


IMPORTS = [  # (kind, PEFT config, the method import_delta gives)
    ("bart", peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, lora_dropout=0.05,
                             target_modules=["q_proj", "v_proj", "fc2"]),  # self and cross
     "lora(r=4,alpha=8.0,at=q+v+fc2,dropout=0.05)"),
    ("roberta", peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=6, use_rslora=True,
                                alpha_pattern={"value": 2.0}, target_modules=["query", "value"]),
     "lora(r=4,alpha=6.0,at=q,dropout=0.0,rslora=true)"
     "+lora(r=4,alpha=2.0,at=v,dropout=0.0,rslora=true)"),
    ("bart", peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=2, use_dora=True,
                             target_modules=["q_proj", "fc1"]),
     "lora(r=2,alpha=8.0,at=q+fc1,dropout=0.0,dora=true)"),
    ("bart", peft.IA3Config(task_type="SEQ_2_SEQ_LM"), "ia3(at=q+v+fc2,inputs=fc2)"),
    # PEFT's default 'output.dense' is also attention.output.dense (both input-scaled)
    ("roberta", peft.IA3Config(task_type="SEQ_CLS"), "ia3(at=k+v+o+fc2,inputs=o+fc2)"),
]


@pytest.mark.parametrize("kind,config,method", IMPORTS)
def test_import_of_a_peft_folder_gives_peft_logits(bases, kind, config, method, tmp_path):
    folder, base = bases[kind]
    out = str(tmp_path / "from_peft")
    theirs = _torch_logits(_peft_folder(kind, folder, out, config), kind)
    model, delta = up.import_delta(out, base)
    assert model.method.name == method
    assert np.abs(_ours(model, base, delta, kind) - theirs).max() < TOL
    # the spec is a preset string: the same model is built from it
    assert up.parse_method(model.method.name).resolve(model.cfg) == model.method


def _one_line_error(call, *words):
    with pytest.raises(ExchangeError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def _write_config(folder, **config):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return folder


def test_import_refusals_are_one_line(bases, tmp_path):
    folder, base = bases["bart"]
    boft = _write_config(str(tmp_path / "boft"), peft_type="BOFT")
    _one_line_error(lambda: up.import_delta(boft, base), "BOFT", "LORA")
    biases = _write_config(str(tmp_path / "bias"), peft_type="LORA", bias="all")
    _one_line_error(lambda: up.import_delta(biases, base), "bias='all'")
    # LoRA on the encoder's q only: our lora term puts it on every q projection
    partial = str(tmp_path / "partial")
    _peft_folder("bart", folder, partial, peft.LoraConfig(
        task_type="SEQ_2_SEQ_LM", r=2, target_modules=r"model\.encoder\.layers\.\d+\.self_attn"
        r"\.q_proj"))
    _one_line_error(lambda: up.import_delta(partial, base), "1 of the 3 q projections")
    mixed = str(tmp_path / "mixed")  # the encoder q at rank 4, the other q projections at 2
    _peft_folder("bart", folder, mixed, peft.LoraConfig(
        task_type="SEQ_2_SEQ_LM", r=2, target_modules=["q_proj"],
        rank_pattern={r"model\.encoder\.layers\.0\.self_attn\.q_proj": 4}))
    _one_line_error(lambda: up.import_delta(mixed, base), "q projections are adapted "
                    "differently")
    _one_line_error(lambda: up.import_delta(str(tmp_path), base), "adapter_config.json")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    _one_line_error(lambda: up.import_delta("someone/some-lora", base), "HF_HUB_OFFLINE=1")


# ------------------------------------------------------------------------- refusals
REFUSED = [
    ("bart", "prefix(l=2)", "peft", ("PEFT", "decoder self-attention", "--format adapters")),
    ("bart", "lora(r=2)+pa(r=2)", "peft", ("bottleneck adapters",)),
    ("roberta", "bitfit", "peft", ("BitFit",)),
    ("bart", "full", "peft", ("full fine-tuning",)),
    ("bart", "mh_pa(r=2)", "adapters", ("multi-head adapter",)),
    ("bart", "lora(r=2)", "adapters", ("--format peft",)),
    ("bart", "prefix_nogate(l=2)", "adapters", ("ungated",)),
    ("roberta", "pa(at=attn, r=2, ln=out)", "adapters", ("ln=out",)),
    ("bart", "prompt(l=2)", "adapters", ("prompt tuning",)),
    ("bart", "lora(r=2, at=q)+ia3(at=k)", "peft", ("one tuner type",)),
    ("bart", "dora(r=2, at=q)+lora(r=2, at=v)", "peft", ("mixes DoRA",)),
    ("bart", "unipelt(l=2, r=2, adapter_r=2)", "peft", ("learned gate",)),
    ("roberta", "pfeiffer(r=2, learn_gate=true)", "adapters", ("mean over the sequence",)),
    ("roberta", "ia3", "adapters", ("--format peft",)),
]


@pytest.mark.parametrize("kind,method,fmt,words", REFUSED)
def test_export_refusals_are_one_line_and_write_nothing(bases, kind, method, fmt, words,
                                                        tmp_path):
    _, base = bases[kind]
    model = _model(base, kind, method)
    delta = {} if method == "full" else _random_delta(model)
    out = tmp_path / "out"
    _one_line_error(lambda: up.export_delta(model, delta, base, str(out), format=fmt), *words)
    assert os.listdir(tmp_path) == []  # no folder, no temporary left behind


def test_export_never_overwrites(bases, tmp_path):
    _, base = bases["bart"]
    model = _model(base, "bart", "lora(r=2)")
    (tmp_path / "keep.txt").write_text("mine")
    _one_line_error(lambda: up.export_delta(model, _random_delta(model), base, str(tmp_path)),
                    "not an empty folder")
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_adapterhub_layout_is_what_save_adapter_writes(bases, tmp_path):
    """Key names and config of `adapters` 1.3's save_adapter for a one-layer BART (read from
    a folder it wrote). Numerical parity: make check-adapters."""
    _, base = bases["bart"]
    model = _model(base, "bart", "houlsby(r=4)+prefix(l=2)")
    delta = _random_delta(model)
    out = str(tmp_path / "ah")
    files = up.export_delta(model, delta, base, out, format="adapters", name="x")
    assert {"adapter_config.json", "adapter.safetensors", "pytorch_adapter.bin"} == set(files)
    from safetensors.numpy import load_file

    keys = set(load_file(os.path.join(out, "adapter.safetensors")))
    layer = "model.encoder.layers.0"
    assert {f"{layer}.attention_adapters.adapters.x.adapter_norm_before.weight",
            f"{layer}.attention_adapters.adapters.x.adapter_down.0.weight",  # the LN again
            f"{layer}.attention_adapters.adapters.x.adapter_down.1.weight",
            f"{layer}.output_adapters.adapters.x.adapter_down.0.weight",
            "model.decoder.layers.0.cross_attention_adapters.adapters.x.adapter_up.bias",
            f"{layer}.self_attn.prefix_tuning.pool.prefix_tunings.x.cross_prefix.control_trans",
            "model.decoder.layers.0.encoder_attn.prefix_tuning.pool.prefix_tunings.x.self_prefix"
            ".control_trans",
            "model.prefix_tuning.prefix_tunings.x.encoder_prefix.control_trans"} <= keys
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["name"] == "x" and config["model_class"] == "BartForConditionalGeneration"
    attn, ffn, prefix = config["config"]["configs"]
    assert (attn["mh_adapter"], attn["cross_adapter"], attn["ln_before"]) == (True, True, True)
    assert (ffn["output_adapter"], ffn["ln_before"], ffn["original_ln_before"]) == (True, False,
                                                                                   False)
    assert int(32 // attn["reduction_factor"]) == 4
    assert (prefix["architecture"], prefix["flat"], prefix["prefix_length"]) == (
        "prefix_tuning", True, 2)


# ------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny SST-2 LoRA run trained through the CLI (4 steps, evaluated at 2 and 4: best/)."""
    tiny_runs.enable_compile_cache(tmp_path_factory)
    folder = tiny_runs.model_folder(tmp_path_factory, "roberta")
    data = str(tmp_path_factory.mktemp("data"))
    train_file, eval_file = tiny_runs.write_data(data, "sst2", n_train=32, n_eval=8)
    config = tiny_runs.write_config_file(os.path.join(data, "tiny.py"), folder, train_file,
                                         eval_file, steps=4)
    workdir = str(tmp_path_factory.mktemp("run"))
    cli.main(["train", "--config", config, "--workdir", workdir, "--config.eval_every=2"])
    return {"workdir": workdir, "base": folder}


def test_cli_export_end_to_end(run, capsys, tmp_path):
    out = str(tmp_path / "best")
    cli.main(["export", "--workdir", run["workdir"], "--format", "peft", "--out", out,
              "--best"])
    result = json.loads(capsys.readouterr().out)
    assert result["selected"] and result["files"] == ["adapter_config.json",
                                                      "adapter_model.safetensors"]
    base = up.load_pretrained(run["base"], tokenizer=False)
    model, delta = up.load_delta(os.path.join(run["workdir"], "best", "delta.safetensors"), base)
    loaded = peft.PeftModel.from_pretrained(_hf("roberta", run["base"], num_labels=2), out)
    assert np.abs(_ours(model, base, delta, "roberta")
                  - _torch_logits(loaded.eval(), "roberta")).max() < TOL

    latest = str(tmp_path / "latest")
    cli.main(["export", "--workdir", run["workdir"], "--format", "peft", "--out", latest])
    assert json.loads(capsys.readouterr().out)["step"] == 4

    for argv, words in (
            (["--format", "adapters", "--out", str(tmp_path / "ah")], "--format peft"),
            (["--format", "peft", "--out", out], "not an empty folder"),
            (["--format", "onnx", "--out", str(tmp_path / "x")], "invalid choice")):
        with pytest.raises(SystemExit) as e:
            cli.main(["export", "--workdir", run["workdir"], *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and words in err, err
    assert not os.path.exists(tmp_path / "ah")


def test_readme_interop_table_names_every_preset():
    from unified_petl.delta.spec import PRESETS

    readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md"),
                  encoding="utf-8").read()
    section = readme[readme.index("## Exchanging Δh with PEFT and AdapterHub"):]
    section = section[:section.index("\n## ")]
    named = {name for row in section.splitlines() if row.startswith("| `")
             for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert set(PRESETS) <= named, sorted(set(PRESETS) - named)
