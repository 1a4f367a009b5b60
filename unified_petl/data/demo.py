"""The offline demo task: sentiment of sentences built around VADER lexicon words.

`vaderSentiment` ships `vader_lexicon.txt` (MIT): one line per token,
`word<TAB>mean_valence<TAB>std<TAB>[ten human ratings]`, valence in [-4, 4]. We keep
alphabetic words with a clear sign (|valence| >= min_abs_valence), label them 1 (positive)
or 0 (negative), balance the two classes, and wrap each word in a few neutral templates.

The split is BY WORD: a test word never appears in a training sentence, and every template
appears on both sides, so the only way to label a test sentence is to know what the word
means, i.e. knowledge already in the pretrained encoder. This is the miniature of the paper's
GLUE experiment that runs anywhere, without network access.
"""
from __future__ import annotations

import os

import datasets
import numpy as np

# Neutral frames that fit nouns, verbs and adjectives alike; none carries sentiment itself,
# so a model that reads only the template stays at chance.
TEMPLATES = (
    "the word of the day is {w}.",
    "someone wrote {w} on the board.",
    "in one word: {w}.",
    "the review said {w}.",
    "i keep thinking about {w}.",
    "she just said {w}.",
    "{w}, that is what he told me.",
    "the headline read {w}.",
    "my first thought was {w}.",
    "it all came down to {w}.",
)

LABEL_NAMES = ("negative", "positive")


def lexicon_path() -> str:
    """Path of the VADER lexicon inside the installed vaderSentiment package."""
    import vaderSentiment

    path = os.path.join(os.path.dirname(vaderSentiment.__file__), "vader_lexicon.txt")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: reinstall the vaderSentiment package "
                         "(pip install vadersentiment), which ships the lexicon")
    return path


def read_lexicon(path: str | None = None) -> dict[str, float]:
    """word -> mean valence for every line of the lexicon (emoticons included)."""
    lexicon = {}
    with open(path or lexicon_path(), encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                continue  # blank line
            try:
                lexicon[fields[0]] = float(fields[1])
            except ValueError:
                raise ValueError(f"{path}:{line_no}: valence {fields[1]!r} is not a number; "
                                 "expected word<TAB>valence<TAB>...") from None
    return lexicon


def demo_words(*, min_abs_valence: float = 1.0, words_per_class: int | None = None,
               seed: int = 0) -> list[tuple[str, int]]:
    """Balanced (word, label) pairs, label = 1 if valence > 0 else 0.

    Keeps ASCII alphabetic words (drops emoticons like ":-)" and words like "b^d") with
    |valence| >= min_abs_valence; each class is subsampled (seeded) to the size of the
    smaller class, capped at words_per_class. Sorted by (label, word) for determinism.
    """
    lexicon = read_lexicon()
    by_label: dict[int, list[str]] = {0: [], 1: []}
    for word, valence in sorted(lexicon.items()):
        if word.isascii() and word.isalpha() and abs(valence) >= min_abs_valence:
            by_label[int(valence > 0)].append(word)
    n = min(len(by_label[0]), len(by_label[1]))
    if words_per_class is not None:
        n = min(n, words_per_class)
    if n < 2:
        raise ValueError(f"only {n} words per class with |valence| >= {min_abs_valence}; "
                         "lower min_abs_valence")
    rng = np.random.default_rng(seed)
    pairs = []
    for label in (0, 1):
        keep = rng.choice(len(by_label[label]), size=n, replace=False)
        pairs += [(by_label[label][i], label) for i in sorted(keep)]
    return pairs


def _sentences(pairs, templates_per_word: int, rng: np.random.Generator) -> dict[str, list]:
    rows = {"text": [], "label": [], "word": []}
    for word, label in pairs:
        for t in rng.choice(len(TEMPLATES), size=templates_per_word, replace=False):
            rows["text"].append(TEMPLATES[t].format(w=word))
            rows["label"].append(label)
            rows["word"].append(word)
    order = rng.permutation(len(rows["text"]))  # so max_examples/select(range(n)) mixes words
    return {k: [v[i] for i in order] for k, v in rows.items()}


def demo_task(seed: int = 0, test_fraction: float = 0.2, min_abs_valence: float = 1.0,
              templates_per_word: int = 3, words_per_class: int | None = None,
              test_templates_per_word: int = 1) -> dict[str, datasets.Dataset]:
    """The demo split: dict(train=Dataset, test=Dataset), columns text (str), label (int), word.

    Defaults: every lexicon word with |valence| >= 1, balanced to the smaller class (2,435
    words per class in vaderSentiment 3.3.2) -> 3,896 train words / 974 test words
    (stratified by label); 3 templates per train word and 1 per test word = 11,688 train
    and 974 test sentences. (More test templates per word would cost evaluation time and
    add little: the words, not the templates, are what is held out.) Deterministic in
    `seed`: the same seed gives the same words, templates and row order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
    for name, value in (("templates_per_word", templates_per_word),
                        ("test_templates_per_word", test_templates_per_word)):
        if not 1 <= value <= len(TEMPLATES):
            raise ValueError(f"{name}={value} must be in [1, {len(TEMPLATES)}] (the number "
                             "of templates)")
    pairs = demo_words(min_abs_valence=min_abs_valence, words_per_class=words_per_class,
                       seed=seed)
    rng = np.random.default_rng([seed, 1])
    train, test = [], []
    for label in (0, 1):  # stratified: the same test fraction of each class
        words = [p for p in pairs if p[1] == label]
        words = [words[i] for i in rng.permutation(len(words))]
        n_test = max(1, int(round(test_fraction * len(words))))
        test += words[:n_test]
        train += words[n_test:]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
                                  "word": datasets.Value("string")})
    return {split: datasets.Dataset.from_dict(_sentences(words, per_word, rng),
                                              features=features)
            for split, words, per_word in (("train", train, templates_per_word),
                                           ("test", test, test_templates_per_word))}
