"""Metrics equal the field's libraries called directly on the same strings."""
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from unified_petl import evaluate as ev

PREDS = ["The cat sat on the mat. It was happy.",
         "Police arrested two men after the robbery in Leeds.",
         "Mr. Smith said the U.S. economy grew. Markets rose!"]
REFS = ["A cat was sitting on the mat. The cat looked happy.",
        "Two men have been arrested following a robbery in Leeds city centre.",
        "The US economy grew by 2%, Mr. Smith said. Stocks climbed."]


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    want = {k: 0.0 for k in ("rouge1", "rouge2", "rougeLsum")}
    for p, r in zip(PREDS, REFS):
        s = scorer.score("\n".join(ev.split_sentences(r)), "\n".join(ev.split_sentences(p)))
        for k in want:
            want[k] += 100 * s[k].fmeasure / len(PREDS)
    got = ev.rouge(PREDS, REFS)
    assert got == pytest.approx(want, abs=1e-9)
    assert ev.compute("rouge", PREDS, REFS) == got
    assert ev.rouge(REFS, REFS)["rouge2"] == pytest.approx(100.0)


def test_sentence_splitting_for_rouge_lsum():
    assert ev.split_sentences("Mr. Smith left. He won!  Then J. Doe came.\nNew line") == [
        "Mr. Smith left.", "He won!", "Then J. Doe came.", "New line"]
    assert ev.split_sentences('He said "go." Then 3.5 m fell.') == ['He said "go."', "Then 3.5 m fell."]
    assert ev.add_newlines("One. Two.") == "One.\nTwo."
    # Lsum sees the sentence split: a reordered summary scores higher on Lsum than on plain L
    pred, ref = "Markets rose sharply. The bank cut rates.", "The bank cut rates. Markets rose sharply."
    assert ev.rouge([pred], [ref])["rougeLsum"] == pytest.approx(100.0)


RO_PREDS = ["Aceasta este o casă frumoasă.", "Ştiinţa şi ţara sunt importante, a spus el."]
RO_REFS = ["Aceasta e o casă foarte frumoasă.", "Știința și țara contează, a declarat el."]


@pytest.mark.parametrize("tokenize", ["13a", "moses"])
def test_bleu_equals_sacrebleu(tokenize):
    preds = [ev.romanian_postprocess(p) for p in RO_PREDS]
    refs = [ev.romanian_postprocess(r) for r in RO_REFS]
    if tokenize == "moses":
        from sacremoses import MosesTokenizer

        tok = MosesTokenizer(lang="ro")
        preds = [tok.tokenize(p, escape=False, return_str=True) for p in preds]
        refs = [tok.tokenize(r, escape=False, return_str=True) for r in refs]
        # the reference's exps/romanian_postprocess.sh, line 27: sacrebleu -tok none -s none
        want = sacrebleu.corpus_bleu(preds, [refs], tokenize="none", smooth_method="none")
    else:
        want = sacrebleu.corpus_bleu(preds, [refs], tokenize="13a")
    got = ev.bleu(RO_PREDS, RO_REFS, target_lang="ro", tokenize=tokenize)
    assert got["bleu"] == pytest.approx(want.score, abs=1e-9)
    assert (got["sys_len"], got["ref_len"]) == (want.sys_len, want.ref_len)
    assert ev.compute("bleu", RO_PREDS, RO_REFS) == ev.bleu(RO_PREDS, RO_REFS)


def test_moses_bleu_is_unsmoothed_as_the_reference():
    """No 4-gram in common: sacrebleu's default (exp) smoothing gives a score, the
    reference's `-s none` gives 0. Moses BLEU must be the latter."""
    from sacremoses import MosesTokenizer

    pred, ref = ["Casa este mare, a spus el."], ["Casa e mare, a zis el."]
    tok = MosesTokenizer(lang="ro")
    args = ([tok.tokenize(pred[0], escape=False, return_str=True)],
            [[tok.tokenize(ref[0], escape=False, return_str=True)]])
    unsmoothed = sacrebleu.corpus_bleu(*args, tokenize="none", smooth_method="none").score
    smoothed = sacrebleu.corpus_bleu(*args, tokenize="none").score
    assert unsmoothed == 0.0 < smoothed
    assert ev.bleu(pred, ref, tokenize="moses")["bleu"] == unsmoothed


def test_bleu_tokenize_is_a_checked_config_key():
    """eval.bleu_tokenize: '13a' by default, 'moses' in every en-ro paper config (the
    reference's scoring); anything else is refused with one line."""
    import glob
    import os

    from unified_petl.train.config import (ConfigError, base_config, check_config, load_config,
                                           override, with_defaults)

    assert base_config().eval.bleu_tokenize == "13a"
    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
    rows = [p for p in glob.glob(os.path.join(configs, "wmt_en_ro", "*.py"))
            if not p.endswith("_common.py")]
    assert rows and all(load_config(p).eval.bleu_tokenize == "moses" for p in rows)
    config = override(base_config(), ["eval.bleu_tokenize=intl"])
    config.base, config.task = "some/base", "wmt16_en_ro"
    with pytest.raises(ConfigError, match="use '13a' .* or 'moses'"):
        check_config(with_defaults(config))


def test_bleu_other_language_is_plain_sacrebleu():
    want = sacrebleu.corpus_bleu(PREDS, [REFS], tokenize="13a").score
    assert ev.bleu(PREDS, REFS, target_lang="en")["bleu"] == pytest.approx(want)


def test_postprocess_makes_cedilla_and_comma_forms_equal():
    pred, ref = "Ştiinţa şi ţara sunt bune, a spus el.", "Știința și țara sunt bune, a spus el."
    assert ev.bleu([pred], [ref])["bleu"] == pytest.approx(100.0)
    assert ev.bleu([pred], [ref], target_lang="en")["bleu"] < 100.0


@pytest.mark.parametrize("text, want", [
    ("ă â î ș ț", "a a i s t"),  # comma-below forms
    ("ş ţ", "s t"),  # cedilla forms
    ("Ă Â Î Ș Ț Ş Ţ", "A A I S T S T"),  # capitals of both
    ("Ştiinţa şi ţara", "Stiinta si tara"),
    ("Bucureşti, România", "Bucuresti, Romania"),
])
def test_romanian_diacritics(text, want):
    assert ev.romanian_postprocess(text) == want


def test_romanian_punctuation_normalisation():
    assert ev.romanian_postprocess("„Bună ziua”") == '"Buna ziua"'  # Romanian quotes -> "
    assert ev.romanian_postprocess("«da»") == '"da"'
    assert ev.romanian_postprocess("el a spus…") == "el a spus..."
    assert ev.romanian_postprocess("5 %") == "5%"
    assert ev.romanian_postprocess("a  b") == "a b"  # repeated spaces collapse


def test_accuracy():
    assert ev.accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == {"accuracy": 50.0}
    assert ev.accuracy([1, 0, 2], [1, 1, 2], weights=[1, 0, 1])["accuracy"] == 100.0  # filler row
    assert ev.compute("accuracy", [0], [0]) == {"accuracy": 100.0}
    with pytest.raises(ValueError, match="labels"):
        ev.accuracy([1, 0], [1])


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        ev.compute("meteor", [], [])
    with pytest.raises(ValueError, match="one reference per prediction"):
        ev.rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="lists of strings"):
        ev.bleu("a", "a")
