"""Tokenisation and fixed-shape batches with exact resume.

A jitted step compiles once per distinct input shape, so batches are padded to a few length
buckets (powers of two up to the task's max length) and always hold a fixed number of rows.
The order of batches is a pure function of (seed, epoch); a `BatchStream` can start at any
(epoch, position), position = batches already consumed in that epoch, which the trainer
checkpoints so that a resumed run sees exactly the batches an uninterrupted run would.

Batch formats (numpy, one dict per batch, B rows; with process_count > 1 each host gets its
B / process_count rows of the global batch, shapes agreed across hosts):
  classification: input_ids int32 [B, L], attention_mask int32 [B, L], labels int32 [B],
      token_type_ids int32 [B, L] (only if the tokenizer makes them; 0 on padding),
      weight float32 [B].
  seq2seq: input_ids int32 [B, S], attention_mask int32 [B, S], decoder_input_ids int32
      [B, T], decoder_attention_mask int32 [B, T], labels int32 [B, T] (pad_id on padding),
      weight float32 [B].
weight is 1 for real rows and 0 for the rows that fill a short last batch
(drop_remainder=False). Filler rows copy a real row of the batch, so the model never sees an
all-padding row (no fully masked softmax), and their decoder_attention_mask is 0, so a loss
weighted by decoder_attention_mask ignores them even without `weight`; classification
losses and metrics must multiply by `weight`.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Mapping, Sequence

import numpy as np

from unified_petl.data.tasks import Task


# ----------------------------------------------------------------------------- storage
@dataclasses.dataclass
class Ragged:
    """Variable-length int32 rows stored flat: row i = values[offsets[i]:offsets[i + 1]].

    One flat array instead of a list of lists: XSum's 204k x 512 tokens take ~400 MB this
    way and several GB as Python ints.
    """
    values: np.ndarray  # int32 [total tokens]
    offsets: np.ndarray  # int64 [N + 1]

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32,
                             count=int(offsets[-1]))
        return cls(values, offsets)

    @classmethod
    def concat(cls, parts: Sequence["Ragged"]) -> "Ragged":
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64))
        shifts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] +
                                 [p.offsets[1:] + s for p, s in zip(parts, shifts)])
        return cls(np.concatenate([p.values for p in parts]), offsets.astype(np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N]"""
        return np.diff(self.offsets)


@dataclasses.dataclass
class Encoded:
    """A tokenised split. Seq2seq: source + target; classification: source + labels."""
    kind: str  # "seq2seq" | "classification"
    source: Ragged  # token ids, special tokens included, truncated to max_source_len
    pad_id: int
    max_source_len: int
    max_target_len: int = 0
    target: Ragged | None = None  # seq2seq label ids (e.g. BART `<s> Y </s>`, mBART `Y </s> ro_RO`)
    labels: np.ndarray | None = None  # classification int32 [N]
    token_types: Ragged | None = None  # only if the tokenizer makes token_type_ids

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        """Example i as plain lists, for inspection."""
        out = {"input_ids": self.source[i].tolist()}
        if self.target is not None:
            out["labels"] = self.target[i].tolist()
        if self.labels is not None:
            out["labels"] = int(self.labels[i])
        if self.token_types is not None:
            out["token_type_ids"] = self.token_types[i].tolist()
        return out


def encode(task: Task, dataset, tokenizer, *, max_source_len: int | None = None,
           max_target_len: int | None = None, chunk_size: int = 1000) -> Encoded:
    """Tokenise a split of `task` (a datasets.Dataset or a list of example dicts).

    Lengths default to the task's (pass max_target_len=task.eval_max_target_len for XSum
    validation). Multilingual tokenizers get the task's src_lang/tgt_lang first, so mBART
    produces source `X </s> en_XX` and target `Y </s> ro_RO`.
    """
    s_len = max_source_len or task.max_source_len
    t_len = max_target_len or task.max_target_len
    if task.kind == "seq2seq" and t_len <= 0:
        raise ValueError(f"task {task.name!r} is seq2seq but max_target_len={t_len}; set it > 0")
    # Setting the attributes is how transformers' MBart tokenizers choose the language codes.
    for attr in ("src_lang", "tgt_lang"):
        value = getattr(task, attr)
        if value is not None and hasattr(tokenizer, attr):
            setattr(tokenizer, attr, value)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token; "
                         "set tokenizer.pad_token before encoding")

    sources, targets, types, labels = [], [], [], []
    for chunk in _chunks(dataset, chunk_size):
        src = [task.source_fn(ex) for ex in chunk]
        if src and isinstance(src[0], tuple):  # a text pair: tokenizer(first, second)
            enc = tokenizer([a for a, _ in src], [b for _, b in src], max_length=s_len,
                            truncation=True)
        else:
            enc = tokenizer(src, max_length=s_len, truncation=True)
        sources.append(Ragged.from_lists(enc["input_ids"]))
        if task.kind == "classification" and "token_type_ids" in enc:
            types.append(Ragged.from_lists(enc["token_type_ids"]))
        tgt = [task.target_fn(ex) for ex in chunk]
        if task.kind == "seq2seq":
            ids = tokenizer(text_target=tgt, max_length=t_len, truncation=True)["input_ids"]
            targets.append(Ragged.from_lists(ids))
        else:
            for label in tgt:  # a cast would cut 1.7 to 1 and fail on None with a TypeError
                if isinstance(label, bool) or not (isinstance(label, (int, np.integer)) or (
                        isinstance(label, float) and label.is_integer())):
                    raise ValueError(f"task {task.name!r}: label {label!r} is not a class id "
                                     f"(an integer 0..{task.num_labels - 1})")
            labels.append(np.asarray(tgt, dtype=np.int32).reshape(-1))

    out = Encoded(kind=task.kind, source=Ragged.concat(sources), pad_id=int(tokenizer.pad_token_id),
                  max_source_len=s_len, max_target_len=t_len if task.kind == "seq2seq" else 0)
    if task.kind == "seq2seq":
        out.target = Ragged.concat(targets)
        if len(out) and out.target.lengths.min() == 0:
            raise ValueError(f"task {task.name!r}: a target tokenised to zero tokens; "
                             "drop empty targets before encoding")
    else:
        out.labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        bad = out.labels[(out.labels < 0) | (out.labels >= task.num_labels)]
        if bad.size:
            raise ValueError(f"task {task.name!r}: label {int(bad[0])} outside "
                             f"0..{task.num_labels - 1} (GLUE test splits are unlabelled, -1); "
                             "encode a labelled split")
        out.token_types = Ragged.concat(types) if types else None
    return out


def _chunks(dataset, size: int) -> Iterator[list[Mapping]]:
    """Lists of example dicts, `size` at a time, from a datasets.Dataset or a list."""
    if hasattr(dataset, "iter") and hasattr(dataset, "column_names"):
        for cols in dataset.iter(batch_size=size):
            keys = list(cols)
            yield [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]
    else:
        rows = list(dataset)
        for i in range(0, len(rows), size):
            yield rows[i:i + size]


# ----------------------------------------------------------------------------- buckets
def make_buckets(max_len: int, min_bucket: int = 16) -> tuple[int, ...]:
    """Powers of two from min_bucket below max_len, then max_len: 150 -> (16, 32, 64, 128, 150)."""
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1")
    buckets, b = [], min_bucket
    while b < max_len:
        buckets.append(b)
        b *= 2
    return tuple(buckets) + (max_len,)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    i = int(np.searchsorted(buckets, length, side="left"))
    if i == len(buckets):
        raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}; "
                         "add a bucket or encode with a smaller max length")
    return int(buckets[i])


def _check_buckets(buckets, longest: int, what: str) -> tuple[int, ...]:
    buckets = tuple(sorted(int(b) for b in buckets))
    if not buckets or buckets[-1] < longest:
        raise ValueError(f"{what} buckets {buckets} do not cover the longest {what} "
                         f"({longest} tokens); add a bucket >= {longest}")
    return buckets


# ----------------------------------------------------------------------------- the stream
class BatchStream:
    """Batches of fixed shape, in an order fixed by (seed, epoch), resumable at a position.

    Sentence batches (batch_size): each epoch a seeded permutation (or index order with
    shuffle=False) is cut into batches of batch_size rows, each padded to the smallest
    bucket that fits its longest row. Token batches (max_tokens, for translation): rows are
    grouped by their (source bucket, target bucket); a group's batches have
    B = max_tokens // max(S, T) rows, rounded down to a multiple of multiple_of (the number
    of devices), and the batches of all groups are shuffled together.

    Iterating yields dicts as described in the module docstring. num_epochs=None repeats
    forever; otherwise the stream stops when it reaches epoch num_epochs (an absolute count,
    so a resumed stream stops where the original would have). state() is the (epoch,
    position) of the next batch; pass it back as epoch=, position= to resume.
    """

    def __init__(self, encoded: Encoded, *, batch_size: int | None = None,
                 max_tokens: int | None = None, multiple_of: int = 1, seed: int = 0,
                 epoch: int = 0, position: int = 0, shuffle: bool = True,
                 drop_remainder: bool = True, num_epochs: int | None = None,
                 pad_id: int | None = None, decoder_start_token_id: int | None = None,
                 source_buckets: Sequence[int] | None = None,
                 target_buckets: Sequence[int] | None = None,
                 process_index: int = 0, process_count: int = 1):
        if (batch_size is None) == (max_tokens is None):
            raise ValueError("give exactly one of batch_size (sentence batches) or max_tokens "
                             "(token-budget batches)")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if multiple_of < 1:
            raise ValueError(f"multiple_of={multiple_of} must be >= 1")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
        rows_unit = batch_size if batch_size is not None else multiple_of
        if rows_unit % process_count:
            raise ValueError(f"{'batch_size' if batch_size else 'multiple_of'}={rows_unit} must be "
                             f"a multiple of process_count={process_count} (each host takes "
                             "an equal share of the global batch)")
        self.encoded = encoded
        self.batch_size, self.max_tokens, self.multiple_of = batch_size, max_tokens, multiple_of
        self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
        self.num_epochs = num_epochs
        self.pad_id = encoded.pad_id if pad_id is None else pad_id
        self.decoder_start_token_id = decoder_start_token_id
        self.process_index, self.process_count = process_index, process_count
        self.seq2seq = encoded.kind == "seq2seq"

        self._src_len = encoded.source.lengths
        self.source_buckets = _check_buckets(
            source_buckets or make_buckets(encoded.max_source_len),
            int(self._src_len.max(initial=0)), "source")
        self._src_bucket = np.searchsorted(self.source_buckets, self._src_len)
        if self.seq2seq:
            self._tgt_len = encoded.target.lengths
            self.target_buckets = _check_buckets(
                target_buckets or make_buckets(encoded.max_target_len),
                int(self._tgt_len.max(initial=0)), "target")
            self._tgt_bucket = np.searchsorted(self.target_buckets, self._tgt_len)
        else:
            self.target_buckets = ()
            self._tgt_bucket = np.zeros_like(self._src_bucket)

        self._plan_cache: tuple[int, list[np.ndarray]] | None = None
        self._steps = n = len(self.plan(epoch))
        if n == 0:
            raise ValueError(f"{len(encoded)} examples make no full batch of "
                             f"{batch_size or max_tokens} {'rows' if batch_size else 'tokens'}; "
                             f"lower {'batch_size' if batch_size else 'max_tokens'} or give "
                             "more examples")
        if not 0 <= position <= n:
            raise ValueError(f"position={position} is outside the epoch's {n} batches")
        # position == n means "epoch done": store it as the start of the next epoch.
        self.epoch, self.position = (epoch + 1, 0) if position == n else (epoch, position)

    # -- order -----------------------------------------------------------------
    def plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches as global row indices, int64 [B] each, -1 = filler row."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.encoded)
        if self.batch_size is not None:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            plan = self._cut(order, self.batch_size)
        else:
            plan = []
            keys = self._src_bucket * (len(self.target_buckets) + 1) + self._tgt_bucket
            for key in np.unique(keys):  # sorted: a fixed group order
                rows = np.flatnonzero(keys == key)
                if self.shuffle:
                    rows = rng.permutation(rows)
                plan += self._cut(rows, self._token_batch_rows(rows[0]))
            if self.shuffle:
                plan = [plan[i] for i in rng.permutation(len(plan))]
        self._plan_cache = (epoch, plan)
        return plan

    def _token_batch_rows(self, row: int) -> int:
        length = self.source_buckets[self._src_bucket[row]]
        if self.seq2seq:
            length = max(length, self.target_buckets[self._tgt_bucket[row]])
        rows = self.max_tokens // length // self.multiple_of * self.multiple_of
        if rows == 0:
            raise ValueError(f"max_tokens={self.max_tokens} cannot hold {self.multiple_of} rows "
                             f"of {length} tokens; raise max_tokens to >= "
                             f"{length * self.multiple_of}")
        return rows

    def _cut(self, order: np.ndarray, size: int) -> list[np.ndarray]:
        full = len(order) // size
        out = [order[i * size:(i + 1) * size] for i in range(full)]
        if not self.drop_remainder and len(order) % size:
            rest = order[full * size:]
            out.append(np.concatenate([rest, np.full(size - len(rest), -1, rest.dtype)]))
        return out

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (the same every epoch: group sizes do not depend on the seed)."""
        return self._steps

    # -- iteration -------------------------------------------------------------
    def state(self) -> dict:
        """{"epoch", "position"} of the next batch, to checkpoint."""
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
            plan = self.plan(self.epoch)
            if self.position < len(plan):
                break
            self.epoch, self.position = self.epoch + 1, 0
        batch = self.collate(plan[self.position])
        self.position += 1
        if self.position == len(plan):  # so state() after an epoch's last batch reads (e + 1, 0)
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    # -- assembly --------------------------------------------------------------
    def collate(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """This host's part of the global batch `rows` (int64 [B], -1 = filler)."""
        real = rows[rows >= 0]
        # Shapes come from the GLOBAL batch so every host pads to the same length.
        s = self.source_buckets[self._src_bucket[real].max()]
        if len(rows) % self.process_count:
            raise ValueError(f"batch of {len(rows)} rows does not split over "
                             f"{self.process_count} processes; use a multiple of it")
        per = len(rows) // self.process_count
        mine = rows[self.process_index * per:(self.process_index + 1) * per]
        weight = (mine >= 0).astype(np.float32)
        mine = np.where(mine >= 0, mine, real[0])  # fillers copy a real row (see module doc)
        enc, pad = self.encoded, self.pad_id

        input_ids = np.full((per, s), pad, np.int32)
        attention_mask = np.zeros((per, s), np.int32)
        for i, r in enumerate(mine):
            ids = enc.source[r]
            input_ids[i, :len(ids)] = ids
            attention_mask[i, :len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}

        if not self.seq2seq:
            batch["labels"] = enc.labels[mine].astype(np.int32)
            if enc.token_types is not None:
                types = np.zeros((per, s), np.int32)
                for i, r in enumerate(mine):
                    tt = enc.token_types[r]
                    types[i, :len(tt)] = tt
                batch["token_type_ids"] = types
        else:
            t = self.target_buckets[self._tgt_bucket[real].max()]
            labels = np.full((per, t), pad, np.int32)
            dec_in = np.full((per, t), pad, np.int32)
            dec_mask = np.zeros((per, t), np.int32)
            for i, r in enumerate(mine):
                y = enc.target[r]
                labels[i, :len(y)] = y
                dec_in[i, :len(y)] = shift_right(y, self.decoder_start_token_id)
                dec_mask[i, :len(y)] = weight[i] > 0
            batch.update(decoder_input_ids=dec_in, decoder_attention_mask=dec_mask, labels=labels)
        batch["weight"] = weight
        return batch


def shift_right(labels: np.ndarray, decoder_start_token_id: int | None) -> np.ndarray:
    """Decoder inputs for one unpadded label row [t] -> [t].

    BART: [start, y_0, ..., y_{t-2}]. mBART (start None): the last token, the language
    code, moves to the front: `Y </s> ro_RO` -> `ro_RO Y </s>`, as transformers' mbart
    shift_tokens_right does.
    """
    first = labels[-1] if decoder_start_token_id is None else decoder_start_token_id
    return np.concatenate([[first], labels[:-1]]).astype(np.int32)


# ----------------------------------------------------------------------------- entry points
def batches(encoded: Encoded, *, batch_size: int, seed: int = 0, epoch_start: int = 0,
            position: int = 0, shuffle: bool = True, drop_remainder: bool = True,
            num_epochs: int | None = None, pad_id: int | None = None,
            decoder_start_token_id: int | None = None, buckets: Sequence[int] | None = None,
            target_buckets: Sequence[int] | None = None, process_index: int = 0,
            process_count: int = 1) -> BatchStream:
    """Sentence batches of batch_size rows (see BatchStream). buckets = source buckets."""
    return BatchStream(encoded, batch_size=batch_size, seed=seed, epoch=epoch_start,
                       position=position, shuffle=shuffle, drop_remainder=drop_remainder,
                       num_epochs=num_epochs, pad_id=pad_id,
                       decoder_start_token_id=decoder_start_token_id, source_buckets=buckets,
                       target_buckets=target_buckets, process_index=process_index,
                       process_count=process_count)


def token_budget_batches(encoded: Encoded, max_tokens: int, *, multiple_of: int = 1,
                         seed: int = 0, epoch_start: int = 0, position: int = 0,
                         shuffle: bool = True, drop_remainder: bool = True,
                         num_epochs: int | None = None, pad_id: int | None = None,
                         decoder_start_token_id: int | None = None,
                         buckets: Sequence[int] | None = None,
                         target_buckets: Sequence[int] | None = None, process_index: int = 0,
                         process_count: int = 1) -> BatchStream:
    """Batches of about max_tokens tokens grouped by length (B * max(S, T) <= max_tokens)."""
    return BatchStream(encoded, max_tokens=max_tokens, multiple_of=multiple_of, seed=seed,
                       epoch=epoch_start, position=position, shuffle=shuffle,
                       drop_remainder=drop_remainder, num_epochs=num_epochs, pad_id=pad_id,
                       decoder_start_token_id=decoder_start_token_id, source_buckets=buckets,
                       target_buckets=target_buckets, process_index=process_index,
                       process_count=process_count)


def eval_batches(encoded: Encoded, *, batch_size: int, **kwargs) -> BatchStream:
    """One pass in dataset order; the last batch is filled with weight-0 rows."""
    return batches(encoded, batch_size=batch_size, shuffle=False, drop_remainder=False,
                   num_epochs=1, **kwargs)


def host_slice(batch: Mapping[str, np.ndarray], process_index: int,
               process_count: int) -> dict[str, np.ndarray]:
    """Rows [i * B/P, (i + 1) * B/P) of every array of a global batch of B rows."""
    sizes = {len(v) for v in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"batch arrays disagree on the number of rows: {sorted(sizes)}")
    (rows,) = sizes
    if rows % process_count:
        raise ValueError(f"batch of {rows} rows does not split over {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    per = rows // process_count
    return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}
