"""Predictions over an eval set and their score with the task's metric.

    metrics, predictions = predict_and_score(model, variables, task, encoded, tokenizer,
                                             base, config.generate)

Seq2seq (XSum, WMT16 en-ro): the eval set in dataset order (unified_petl.data.eval_batches,
filler rows dropped) -> beam search (unified_petl.generate with the config's decoding
settings) -> text (special tokens skipped, tokenisation spaces cleaned up, as the reference
code's run_summarization / run_translation decode) -> ROUGE or BLEU
(unified_petl.evaluate.compute with the task's metric; BLEU with the Romanian
post-processing of the target language).
Classification (MNLI, SST-2): argmax of the logits -> accuracy.

References default to the encoded targets decoded the same way, so they are truncated at
the eval target length (XSum: 60 tokens) exactly as the reference code's were; pass
`references` (e.g. the raw summaries) to score against untruncated text.

Runs on the default device of this process (the variables replicated or on one device);
the trainer's sharded eval step computes the loss, this module the generated-text metrics.

Predictions files (JSONL, one object per example: id, input, output, reference) are built
by `prediction_records` and written by `write_jsonl`; `read_text_inputs` reads a text file
with one input per line. `unified-petl eval` / `predict` (unified_petl.train.inference)
use them.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unified_petl.train.config import GENERATE_DEFAULTS

# The keyword arguments of unified_petl.generate that a config's `generate` group may set.
GENERATE_KEYS = tuple(GENERATE_DEFAULTS)


def generate_kwargs(settings: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """A config's `generate` group (ConfigDict or dict) -> keywords of unified_petl.generate.

    Missing keys take transformers' GenerationConfig defaults (greedy, max_length 20); an
    unknown key is an error (a typo would silently decode with the default otherwise).
    """
    out = dict(GENERATE_DEFAULTS)
    if settings is None:
        return out
    items = settings.items() if hasattr(settings, "items") else dict(settings).items()
    for key, value in items:
        if key not in out:
            raise ValueError(f"unknown decoding setting {key!r}; use {', '.join(GENERATE_KEYS)}")
        out[key] = value
    return out


def decoder_start_token_id(task, tokenizer) -> Optional[int]:
    """The first decoder token when the task fixes it: mBART starts with the target language
    code (ro_RO), which mbart-large-cc25's config does not name. None: read the config."""
    lang = getattr(task, "tgt_lang", None)
    if not lang:
        return None
    ids = tokenizer.convert_tokens_to_ids([lang])
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or ids[0] is None or ids[0] == unk:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no token {lang!r} for the "
                         f"target language of task {task.name!r}")
    return int(ids[0])


def decode_texts(tokenizer, ids) -> list[str]:
    """Token ids [B, T] -> strings, special tokens (BOS/EOS/pad/language codes) skipped."""
    rows = [np.asarray(r).tolist() for r in ids]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True,
                                   clean_up_tokenization_spaces=True)
    return [t.strip() for t in texts]


def _rows(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Indices of the real (weight 1) rows of an eval batch."""
    return np.flatnonzero(np.asarray(batch["weight"]) > 0)


def generate_texts(model, variables, encoded, tokenizer, hf_config, settings=None, *,
                   batch_size: int = 16, decoder_start: Optional[int] = None,
                   buckets: Optional[Sequence[int]] = None) -> list[str]:
    """Generated text for every example of a seq2seq `encoded` split, in its order."""
    from unified_petl.data import eval_batches
    from unified_petl.generate import FROM_CONFIG, generate

    kwargs = generate_kwargs(settings)
    start = FROM_CONFIG if decoder_start is None else int(decoder_start)
    texts: list[str] = []
    for batch in eval_batches(encoded, batch_size=batch_size, buckets=buckets):
        ids = generate(model, variables, batch["input_ids"], batch["attention_mask"],
                       config=hf_config, decoder_start_token_id=start, **kwargs)
        texts.extend(decode_texts(tokenizer, np.asarray(ids)[_rows(batch)]))
    return texts


def classify(model, variables, encoded, *, batch_size: int = 32,
             buckets: Optional[Sequence[int]] = None) -> np.ndarray:
    """Predicted class ids int32 [N] of a classification `encoded` split, in its order."""
    from unified_petl.data import eval_batches

    @jax.jit
    def predict(variables, input_ids, attention_mask, token_type_ids):
        out = model.apply(variables, input_ids, attention_mask, token_type_ids,
                          deterministic=True)
        return jnp.argmax(out.logits, axis=-1)

    preds = []
    for batch in eval_batches(encoded, batch_size=batch_size, buckets=buckets):
        pred = predict(variables, batch["input_ids"], batch["attention_mask"],
                       batch.get("token_type_ids"))
        preds.append(np.asarray(pred)[_rows(batch)])
    return np.concatenate(preds).astype(np.int32) if preds else np.zeros(0, np.int32)


def reference_texts(encoded, tokenizer) -> list[str]:
    """The encoded seq2seq targets decoded back to text (what predict_and_score scores
    against by default: truncated at the eval target length, as the reference code's)."""
    return decode_texts(tokenizer, [encoded.target[i] for i in range(len(encoded))])


def predict_and_score(model, variables, task, encoded, tokenizer, hf_config=None,
                      gen_settings=None, *, batch_size: int = 16,
                      references: Optional[Sequence[str]] = None,
                      buckets: Optional[Sequence[int]] = None, bleu_tokenize: str = "13a"
                      ) -> tuple[dict[str, float], list]:
    """(metrics, predictions) of `model` on an encoded eval split of `task`.

    model: from up.build (or load_delta); variables: {'params': frozen, 'delta': Δh}.
    task: a unified_petl.data Task; encoded: unified_petl.data.encode(task, split, tokenizer).
    hf_config: where generation reads token ids (a Base, a transformers config or a
      GenerationConfig; see unified_petl.generate). gen_settings: the config's `generate`
      group (num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size,
      early_stopping). references: target texts to score against (default: the encoded
      targets, decoded). bleu_tokenize: '13a' or 'moses' (config.eval.bleu_tokenize; see
      unified_petl.evaluate.bleu), reported back as metrics["bleu_tokenize"].
    Returns the metric dict of unified_petl.evaluate.compute(task.metric, ...) (seq2seq:
    rouge1/rouge2/rougeLsum or bleu/bp/sys_len/ref_len + bleu_tokenize; classification:
    accuracy, in percent) and the predictions (strings, or class ids).
    """
    from unified_petl import evaluate

    if task.kind == "classification":
        preds = classify(model, variables, encoded, batch_size=batch_size, buckets=buckets)
        return evaluate.compute("accuracy", preds, encoded.labels), preds.tolist()
    if task.kind != "seq2seq":
        raise ValueError(f"task {task.name!r} has kind {task.kind!r}; expected seq2seq or "
                         "classification")
    texts = generate_texts(model, variables, encoded, tokenizer, hf_config, gen_settings,
                           batch_size=batch_size,
                           decoder_start=decoder_start_token_id(task, tokenizer),
                           buckets=buckets)
    if references is None:
        references = reference_texts(encoded, tokenizer)
    if len(references) != len(texts):
        raise ValueError(f"{len(references)} references for {len(texts)} examples")
    kwargs = {}
    if task.metric == "bleu":
        kwargs = {"target_lang": task.target_lang or "", "tokenize": bleu_tokenize}
    scores = evaluate.compute(task.metric, texts, list(references), **kwargs)
    if task.metric == "bleu":  # which tokenisation produced the score
        scores["bleu_tokenize"] = bleu_tokenize
    return scores, texts


# ----------------------------------------------------------------------------- records
# A predictions file (JSONL) has one object per example, in the split's order:
#   {"id": the dataset's id / idx column, else the row (or, for a text file, line) number,
#    "input": source text (a [first, second] pair for MNLI),
#    "output": generated text or predicted class id, "output_label": its name (classification),
#    "reference": the text or class id scored against (absent when unknown)}


def example_ids(dataset) -> list:
    """The dataset's own ids ("id" column: XSum; "idx": GLUE) or the row numbers."""
    columns = getattr(dataset, "column_names", None) or (list(dataset[0]) if len(dataset)
                                                         else [])
    for name in ("id", "idx"):
        if name in columns:
            return [row[name] for row in dataset]
    return list(range(len(dataset)))


def prediction_records(task, inputs: Sequence, outputs: Sequence, ids: Sequence,
                       references: Optional[Sequence] = None) -> list[dict]:
    """One JSON-ready dict per example (see above); inputs from `source_inputs`."""
    if not len(inputs) == len(outputs) == len(ids):
        raise ValueError(f"{len(inputs)} inputs, {len(outputs)} outputs and {len(ids)} ids; "
                         "pass one of each per example")
    names = task.label_names if task.kind == "classification" else ()
    out = []
    for i, (key, source, output) in enumerate(zip(ids, inputs, outputs)):
        record = {"id": key, "input": list(source) if isinstance(source, tuple) else source,
                  "output": output}
        if names and 0 <= int(output) < len(names):
            record["output_label"] = names[int(output)]
        if references is not None:
            record["reference"] = references[i]
        out.append(record)
    return out


def source_inputs(task, dataset) -> list:
    """The model input of every example as text (a (first, second) pair for MNLI)."""
    return [task.source_fn(row) for row in dataset]


def write_jsonl(path: str, records: Sequence[Mapping]) -> None:
    """Write records as JSON lines (written to PATH.tmp, then renamed: never half a file)."""
    import json
    import os

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.isfile(tmp):  # a failed write leaves nothing behind
            os.remove(tmp)


def read_text_inputs(path: str, task) -> tuple[list[int], list[dict]]:
    """(line numbers, examples) of a text file with one input per line, as examples of
    `task` with placeholder targets (empty text, class 0) that are never scored.

    Text-pair tasks (MNLI) take `premise<TAB>hypothesis`; blank lines are skipped (the
    line numbers keep predictions aligned with the file).
    """
    import os

    if not os.path.isfile(path):
        raise ValueError(f"input file {path} not found; give a text file with one input "
                         "per line")
    with open(path, "rb") as f:
        raw = f.read().splitlines()
    pair = task.kind == "classification" and len(_text_columns(task)) == 2
    lines, examples = [], []
    for number, line in enumerate(raw, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} line {number} is not UTF-8 text; save the file as "
                             "UTF-8") from None
        if not text.strip():
            continue
        fields = text.split("\t")
        if pair and len(fields) != 2:
            raise ValueError(f"{path} line {number}: task {task.name!r} takes a text pair; "
                             "write first<TAB>second on each line")
        if not pair:
            fields = [text]
        lines.append(number)
        examples.append(_example(task, [f.strip() for f in fields]))
    if not examples:
        raise ValueError(f"{path} has no input lines; write one input per line")
    return lines, examples


def _text_columns(task) -> list[str]:
    """The source columns of a task (the target column excluded)."""
    if task.kind == "classification":
        return [c for c in task.columns if c != "label"]
    return list(task.columns[:-1])


def _example(task, fields: list[str]) -> dict:
    if task.name == "wmt16_en_ro":  # nested {"en", "ro"}, as the hub's wmt16
        return {"translation": {"en": fields[0], "ro": ""}}
    example = dict(zip(_text_columns(task), fields))
    if task.kind == "classification":
        example["label"] = 0
    else:
        example[task.columns[-1]] = ""
    return example
