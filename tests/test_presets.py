"""Method strings are read strictly: each option by the reader of its kind, anything else is
one SpecError line (through the CLI: `unified-petl: error: ...`, exit 2)."""
import jax
import pytest

import unified_petl as up
from unified_petl.delta.options import Options, parse_call


@pytest.mark.parametrize("text,message", [
    # booleans are true / false only
    ("pa(r=4, head=no)", r"pa\(head=no\): head must be true or false"),
    ("scaled_pa(r=4, learn_s=no)", r"learn_s must be true or false"),
    ("prefix(l=4, mlp=off)", r"mlp must be true or false"),
    ("prefix(l=4, mlp=1)", r"mlp must be true or false"),
    ("prefix(l=4, mlp='true')", r"mlp must be true or false"),
    # integers are integers
    ("lora(r=8.7)", r"lora\(r=8.7\): r must be an integer >= 1"),
    ("lora(r=abc)", r"lora\(r=abc\): r must be an integer >= 1"),
    ("lora(r=true)", r"r must be an integer"),
    ("prefix(l=1e2)", r"l must be an integer"),
    ("prefix(l=4, hidden=0)", r"hidden must be an integer >= 1"),
    ("lora(r=0)", r"r must be an integer >= 1"),
    ("pa(r=-3)", r"r must be an integer >= 1"),
    # sizes and scales range-checked
    ("pa(r=8, s=0)", r"pa\(s=0\): s must be a number in \(0, inf\)"),
    ("pa(r=8, s=-3)", r"s must be a number in \(0, inf\)"),
    ("pa(r=8, s=inf)", r"s must be a number"),
    ("pa(r=8, s=nan)", r"s must be a number"),
    ("mam(l=4, r=8, s=four)", r"s must be a number"),
    ("lora(r=8, alpha=0)", r"alpha must be a number in \(0, inf\)"),
    ("pa(r=8, dropout=1)", r"dropout must be a number in \[0, 1\)"),
    ("pa(r=8, dropout=-0.1)", r"dropout must be a number in \[0, 1\)"),
    ("lora(r=8, dropout=0.5.1)", r"dropout must be a number"),
    # choices
    ("houlsby(r=4, ln=sideways)", r"ln must be one of none, in, out"),
    ("mh_pa(r=4, ln=out)", r"ln must be one of in, none"),
    ("pa(r=4, at=heads)", r"at must be one of attn, ffn"),
    ("pa(r=4, init=xavier)", r"init must be one of bert, lora"),
    ("prefix(l=4, gate=sometimes)", r"gate must be one of concat, gated, add"),
    # options a preset does not take
    ("prefix_nogate(gate=gated)", r"prefix_nogate\(\) got unknown argument\(s\) \['gate'\]"),
    ("prefix_gated(l=4, gate=add)", r"unknown argument\(s\) \['gate'\]"),
    ("mam(l=4, r=8, gate=add)", r"unknown argument\(s\) \['gate'\]"),
    ("bitfit(pattern='.*')", r"bitfit\(\) got unknown argument\(s\) \['pattern'\]"),
    ("lora(r=4, rank=3)", r"unknown argument\(s\) \['rank'\]; it takes r, alpha, at, dropout"),
    ("lora(r=8, r=16)", r"lora\(\) got r= twice"),
    ("full(head=maybe)", r"head must be true or false"),
    # one adapter module per sub-layer (a NameInUseError traceback before)
    ("pa(r=4) + sa(r=4)", r"a parallel and a sequential adapter at ffn"),
    ("houlsby(r=4) + pa(r=4, at=attn)", r"a parallel and a sequential adapter at attn"),
])
def test_bad_option_is_one_spec_error_line(text, message):
    with pytest.raises(up.SpecError, match=message) as err:
        up.parse_method(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,check", [
    ("pa(r=4, head=false)", lambda m: m.train_head is False),
    ("pa(r=4, head=True)", lambda m: m.train_head is True),
    ("prefix(l=4, mlp=False)", lambda m: m.prefix.mlp is False),
    ("scaled_pa(r=4, learn_s=true)", lambda m: m.terms[0].learn_scale is True),
    ("pa(r=8, s=0.5)", lambda m: m.terms[0].scale == 0.5 and m.terms[0].composition == "scaled"),
    ("pa(r=8, dropout=0)", lambda m: m.terms[0].dropout == 0.0),
    ("lora(r=8, alpha=16, dropout=0.1)", lambda m: m.terms[0].scale == 2.0),
    ("masked(pattern='.*(fc1|fc2)/bias')", lambda m: m.masked_patterns == (".*(fc1|fc2)/bias",)),
    ("prefix(l=4, gate=gated)", lambda m: m.prefix.explicit_gate),
    ("mam(l=30, r=512, s=4)", lambda m: len(m.terms) == 2),
])
def test_good_options_are_read_by_kind(text, check):
    assert check(up.parse_method(text))


def test_readers_serve_new_presets():
    """The typed readers are the public way for a preset to read its options."""
    name, raw = parse_call("new(r=8, p=0.25, on=true, kind=b, note='x, y')")
    o = Options(name, raw)
    assert (o.positive_int("r", 1), o.float("p", 0.0, low=0.0, high=1.0), o.bool("on", False),
            o.choice("kind", "a", ("a", "b")), o.text("note", ""),
            o.integer("missing", 3)) == (8, 0.25, True, "b", "x, y", 3)
    o.done()
    o = Options("new", parse_call("new(q=1)")[1])
    o.integer("r", 1)
    with pytest.raises(up.SpecError, match=r"new\(\) got unknown argument\(s\) \['q'\]; it "
                                           r"takes r"):
        o.done()


@pytest.fixture(scope="module")
def roberta(tiny_checkpoint):
    return up.load_pretrained(tiny_checkpoint("roberta", layers=1))


def test_pattern_that_matches_nothing_is_refused_by_count_and_by_init(roberta):
    message = r"masked\(pattern='typo'\) matches no parameter of this model; .*'encoder_layer_0/"
    with pytest.raises(up.SpecError, match=message) as err:
        up.count(roberta.config, "masked(pattern=typo)")
    assert "\n" not in str(err.value)
    model = up.build(roberta.config, "masked(pattern=typo)")
    with pytest.raises(up.SpecError, match=message):  # the trainer's path
        up.init_delta(model, jax.random.key(0), params=roberta.params)
    with pytest.raises(up.SpecError, match=message):  # without the frozen tree
        up.init_delta(model, jax.random.key(0))
    # BART names, refused on RoBERTa rather than training nothing
    with pytest.raises(up.SpecError, match="matches no parameter"):
        up.count(roberta.config, "masked(pattern='.*fc1/bias')")
    assert up.count(roberta.config, "masked(pattern='.*intermediate/bias')")["trained"] == 37


def test_cli_count_refuses_bad_strings_in_one_line(capsys):
    from unified_petl.cli import main

    for method, message in [("lora(r=8.7)", "lora(r=8.7): r must be an integer >= 1"),
                            ("masked(pattern=typo)", "masked(pattern='typo') matches no "
                                                     "parameter")]:
        with pytest.raises(SystemExit) as exit_:
            main(["count", "--base", "roberta-base", "--method", method])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("unified-petl: error: ") and message in err
        assert "\n" not in err
