"""Metrics with the field's libraries: ROUGE (rouge-score), BLEU (sacrebleu), accuracy.

ROUGE: F-measure averaged over examples, in percent, with the Porter stemmer, as the
reference code's `datasets` rouge metric reports it (that one takes the bootstrap median of
the mean, which is the mean up to resampling noise; we report the exact mean). ROUGE-Lsum
treats newlines as sentence boundaries, so both sides are split into one sentence per line
first, with a small regex splitter (nltk's punkt would need a download).

BLEU on WMT16 en->ro follows the mBART/fairseq evaluation the paper inherits: Moses
punctuation normalisation (with the unicode-punctuation replacement and control-character
removal of the Moses pipeline), cedilla -> comma forms, Romanian diacritics removed, then
tokenised BLEU. tokenize="13a" (default) lets sacrebleu tokenise the post-processed text
with its standard WMT tokeniser, which is reproducible from sacrebleu alone;
tokenize="moses" runs the Moses tokenizer (sacremoses, lang="ro", no escaping) and scores
with tokenize="none" and no smoothing, as the reference's exps/romanian_postprocess.sh does
(line 23: `tokenizer.perl -no-escape -l ro`; line 27: `sacrebleu -tok none -s none`), the
fairseq `ro_post_process` recipe. Training configs choose with eval.bleu_tokenize (en-ro:
"moses").
"""
from __future__ import annotations

import functools
import re
from typing import Sequence

import numpy as np

# ----------------------------------------------------------------------------- ROUGE
# Tokens ending in "." that do not end a sentence (lowercase for matching).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr sen rep gov gen col lt sgt capt rev hon vs etc inc ltd co corp "
    "no nos jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.n e.g i.e a.m p.m".split())
# A candidate boundary: . ! or ? (closing quotes/brackets allowed) then whitespace, then
# something that can start a sentence (an uppercase letter, digit or opening quote).
_BOUNDARY = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: existing newlines are kept as boundaries, then regex splitting.

    "Mr. Smith left. He won." -> ["Mr. Smith left.", "He won."]; abbreviations in
    _ABBREVIATIONS and single-letter initials ("J. Smith") do not end a sentence.
    """
    sentences = []
    for line in text.splitlines():
        start = 0
        for m in _BOUNDARY.finditer(line):
            before = line[start:m.start(1)].split()
            word = before[-1].lstrip("\"'“‘([").lower() if before else ""
            if m.group(1).startswith(".") and (word in _ABBREVIATIONS or
                                               (len(word) == 1 and word.isalpha())):
                continue
            sentences.append(line[start:m.end(1)].strip())
            start = m.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def add_newlines(text: str) -> str:
    """One sentence per line, the form ROUGE-Lsum expects."""
    return "\n".join(split_sentences(text))


@functools.lru_cache(maxsize=None)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeLsum"}: mean F-measure x 100 over the examples."""
    _check_pairs(predictions, references)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}
    for pred, ref in zip(predictions, references):
        scores = _scorer().score(add_newlines(ref), add_newlines(pred))  # (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


# ----------------------------------------------------------------------------- BLEU
# Romanian diacritics -> ASCII. Cedilla forms (ş ţ, U+015F/0163, common in older text)
# first become comma-below forms (ș ț, U+0219/021B), as WMT16's normalise-romanian.py does,
# then every form loses its mark, as remove-diacritics.py does.
_CEDILLA_TO_COMMA = str.maketrans({"ş": "ș", "Ş": "Ș", "ţ": "ț", "Ţ": "Ț"})
_REMOVE_DIACRITICS = str.maketrans({"ă": "a", "Ă": "A", "â": "a", "Â": "A", "î": "i", "Î": "I",
                                    "ș": "s", "Ș": "S", "ț": "t", "Ț": "T"})


@functools.lru_cache(maxsize=None)
def _normalizer():
    from sacremoses import MosesPunctNormalizer

    return MosesPunctNormalizer(lang="ro", pre_replace_unicode_punct=True,
                                post_remove_control_chars=True)


def romanian_postprocess(text: str) -> str:
    """Moses punctuation normalisation, cedillas -> commas, Romanian diacritics removed."""
    text = _normalizer().normalize(text)
    return text.translate(_CEDILLA_TO_COMMA).translate(_REMOVE_DIACRITICS)


@functools.lru_cache(maxsize=None)
def _moses_tokenizer(lang: str):
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang=lang)


def bleu(predictions: Sequence[str], references: Sequence[str], *, target_lang: str = "ro",
         tokenize: str = "13a") -> dict[str, float]:
    """Corpus BLEU (sacrebleu), one reference per prediction: {"bleu", "bp", "sys_len", "ref_len"}.

    target_lang="ro" applies romanian_postprocess to both sides first; tokenize is
    sacrebleu's tokenizer name or "moses" (see the module docstring; Moses-tokenised text is
    scored with tokenize="none" and smooth_method="none", as the reference's script).
    """
    import sacrebleu

    _check_pairs(predictions, references)
    preds, refs = [p.strip() for p in predictions], [r.strip() for r in references]
    if target_lang == "ro":
        preds = [romanian_postprocess(p) for p in preds]
        refs = [romanian_postprocess(r) for r in refs]
    if tokenize == "moses":
        tok = _moses_tokenizer(target_lang)
        preds = [tok.tokenize(p, escape=False, return_str=True) for p in preds]
        refs = [tok.tokenize(r, escape=False, return_str=True) for r in refs]
        score = sacrebleu.corpus_bleu(preds, [refs], tokenize="none", smooth_method="none")
    else:
        score = sacrebleu.corpus_bleu(preds, [refs], tokenize=tokenize)
    return {"bleu": float(score.score), "bp": float(score.bp), "sys_len": float(score.sys_len),
            "ref_len": float(score.ref_len)}


# ----------------------------------------------------------------------------- accuracy
def accuracy(predictions, labels, weights=None) -> dict[str, float]:
    """{"accuracy": percent of predictions equal to labels}; weights (0/1) drop filler rows."""
    preds, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.size} predictions but {labels.size} labels; pass one per example")
    w = np.ones(preds.shape) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != preds.shape:
        raise ValueError(f"{w.size} weights for {preds.size} predictions; pass one per example")
    total = w.sum()
    return {"accuracy": float(100.0 * (w * (preds == labels)).sum() / total) if total else 0.0}


def _check_pairs(predictions, references):
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("pass lists of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; "
                         "pass one reference per prediction")


METRICS = {"rouge": rouge, "bleu": bleu, "accuracy": accuracy}


def compute(metric_name: str, predictions, references, **kwargs) -> dict[str, float]:
    """Dispatch to rouge / bleu / accuracy by name (a Task's `metric`)."""
    if metric_name not in METRICS:
        raise ValueError(f"unknown metric {metric_name!r}; choose one of {sorted(METRICS)}")
    return METRICS[metric_name](predictions, references, **kwargs)
