"""Per-process tokenisation: with several processes, each tokenises only what it feeds.

The global batches stay exactly those of one process (the same order, the same padded
shapes, so the same losses and an exact resume): a batch's order is a function of (seed,
epoch) and, for token-budget batches, of every row's length; its padded shapes come from the
longest row of the GLOBAL batch. So every process needs every row's LENGTH, but only its own
rows' TOKENS. `encode_for_process`:

  1. process p of P tokenises one contiguous block of ~N/P rows (a split of the work, not
     the rows it will feed: those depend on the epoch's shuffle);
  2. the processes exchange the lengths (and class labels) of their blocks (one
     process_allgather of small int arrays), so every process knows all N lengths; an
     encoding error on any process (a bad label, an empty target) is raised on every process
     with the same message, instead of leaving the others waiting in the exchange;
  3. the tokens of any other row are tokenised when a batch first needs it (`prefetching`
     wraps a BatchStream: before each batch it tokenises this process's rows of the next
     batches, fillers included), and kept.

Before the first step a process has tokenised ~N/P rows instead of N (XSum: 204k documents,
minutes of tokenisation on every host before); over a first epoch about 2N/P - N/P^2; and
never more than N, as before. One process: `encode` as before, nothing lazy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import numpy as np

from unified_petl.data.batching import Encoded, encode

MESSAGE_BYTES = 1024  # an encoding error's message, exchanged as bytes


class LazyRows:
    """Ragged-like rows whose lengths are known for all and whose tokens are fetched (and
    kept) on first use: lengths int64 [N]; row i -> int32 [lengths[i]]."""

    def __init__(self, lengths: np.ndarray, owner: "HostEncoded", field: str):
        self._lengths = np.asarray(lengths, np.int64)
        self._owner, self._field = owner, field
        self.rows: dict[int, np.ndarray] = {}

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, i) -> np.ndarray:
        i = int(i)
        if i not in self.rows:
            self._owner.fetch([i])
        return self.rows[i]


@dataclasses.dataclass
class HostEncoded(Encoded):
    """An Encoded split of which this process holds the tokens it needs (see the module
    docstring): `source`, `target` and `token_types` are LazyRows over all N rows; `labels`
    (classification) are all there. fetch(rows) tokenises rows; `tokenised` says which."""

    encode_rows: Optional[Callable[[list[int]], Encoded]] = None

    def fetch(self, rows: Iterable[int]) -> None:
        """Tokenise the given rows (those not yet tokenised) in one tokenizer call."""
        missing = sorted({int(r) for r in rows} - self.tokenised)
        if not missing:
            return
        self._store(missing, self.encode_rows(missing))

    def _store(self, rows: list[int], encoded: Encoded) -> None:
        for field in ("source", "target", "token_types"):
            lazy, part = getattr(self, field), getattr(encoded, field)
            if lazy is None or part is None:
                continue
            for j, row in enumerate(rows):
                ids = part[j]
                if len(ids) != lazy.lengths[row]:  # the same tokenizer, the same text
                    raise RuntimeError(f"row {row} tokenised to {len(ids)} {field} tokens here "
                                       f"but {lazy.lengths[row]} on the process that measured "
                                       "it; are the processes reading the same data file?")
                lazy.rows[row] = np.asarray(ids, np.int32)

    @property
    def tokenised(self) -> set[int]:
        """The rows whose tokens this process holds."""
        return set(self.source.rows)

    def prefetching(self, stream, window: int = 16):
        """`stream` (a BatchStream over this split) that tokenises, before each batch, this
        process's rows of that batch and of the next window - 1 batches of the epoch."""
        return Prefetching(stream, self, window)


class Prefetching:
    """A BatchStream wrapper: next(), state() and every other attribute as the stream's."""

    def __init__(self, stream, encoded: HostEncoded, window: int):
        self.stream, self.encoded, self.window = stream, encoded, max(int(window), 1)
        self._ready: tuple[int, int] = (-1, -1)  # (epoch, position) fetched up to, exclusive

    def __iter__(self):
        return self

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __next__(self):
        stream = self.stream
        if stream.num_epochs is None or stream.epoch < stream.num_epochs:
            epoch, position = stream.epoch, stream.position
            if not (self._ready[0] == epoch and position < self._ready[1]):
                plan = stream.plan(epoch)
                end = min(position + self.window, len(plan))
                self.encoded.fetch(r for rows in plan[position:end]
                                   for r in process_rows(rows, stream.process_index,
                                                         stream.process_count))
                self._ready = (epoch, end)
        return next(stream)


def process_rows(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The dataset rows process `process_index` reads for the global batch `rows` (int64
    [B], -1 = filler): its slice, a filler standing for the batch's first real row (as
    BatchStream.collate builds it)."""
    per = len(rows) // process_count
    mine = rows[process_index * per:(process_index + 1) * per]
    if (mine < 0).any():
        mine = np.concatenate([mine[mine >= 0], rows[rows >= 0][:1]])
    return mine


# ----------------------------------------------------------------------------- building
def block(n: int, process_index: int, process_count: int) -> range:
    """The rows process `process_index` tokenises first: one of process_count near-equal
    contiguous blocks of range(n)."""
    bounds = np.linspace(0, n, process_count + 1).round().astype(int)
    return range(int(bounds[process_index]), int(bounds[process_index + 1]))


def local_summary(task, dataset, tokenizer, *, max_source_len=None, max_target_len=None,
                  process_index: int, process_count: int) -> tuple[dict, Optional[Encoded]]:
    """(summary, encoded block) of this process's block: summary = numpy arrays of equal
    shapes on every process, to exchange: table int64 [ceil(N/P), 3] (source length, target
    length, label; -1 beyond the block), count int64 [], token_types int64 [] (1 if the
    tokenizer makes token_type_ids), error uint8 [MESSAGE_BYTES] (a failure's message)."""
    n = len(dataset)
    rows = block(n, process_index, process_count)
    size = -(-n // process_count)
    table = np.full((size, 3), -1, np.int64)
    summary = {"table": table, "count": np.asarray(len(rows), np.int64),
               "token_types": np.asarray(0, np.int64),
               "error": np.zeros(MESSAGE_BYTES, np.uint8)}
    try:
        encoded = encode(task, dataset.select(rows), tokenizer, max_source_len=max_source_len,
                         max_target_len=max_target_len)
    except ValueError as e:  # said on every process (see exchanged)
        text = " ".join(str(e).split()).encode()[:MESSAGE_BYTES - 1]
        summary["error"][:len(text)] = np.frombuffer(text, np.uint8)
        return summary, None
    table[:len(rows), 0] = encoded.source.lengths
    if encoded.target is not None:
        table[:len(rows), 1] = encoded.target.lengths
    if encoded.labels is not None:
        table[:len(rows), 2] = encoded.labels
    summary["token_types"] = np.asarray(int(encoded.token_types is not None), np.int64)
    return summary, encoded


def encode_for_process(task, dataset, tokenizer, *, max_source_len=None, max_target_len=None,
                       process_index: int, process_count: int,
                       exchange: Optional[Callable[[dict], dict]] = None) -> HostEncoded:
    """The split as this process needs it (module docstring). exchange(summary) -> the same
    dict with every array stacked over the processes ([P, ...]); default: JAX's
    process_allgather (every process must call this at the same point)."""
    if exchange is None:
        from jax.experimental import multihost_utils

        def exchange(summary):
            return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(
                summary, tiled=False).items()}

    summary, encoded = local_summary(task, dataset, tokenizer, max_source_len=max_source_len,
                                     max_target_len=max_target_len,
                                     process_index=process_index, process_count=process_count)
    every = exchange(summary)
    for p, message in enumerate(every["error"]):
        if message.any():
            raise ValueError(bytes(message).rstrip(b"\0").decode(errors="replace"))
    table = np.concatenate([every["table"][p, :int(every["count"][p])]
                            for p in range(process_count)])
    if len(table) != len(dataset):
        raise RuntimeError(f"the processes measured {len(table)} rows of a split of "
                           f"{len(dataset)}; are they reading the same data file?")

    def encode_rows(rows: list[int]) -> Encoded:
        return encode(task, dataset.select(rows), tokenizer, max_source_len=max_source_len,
                      max_target_len=max_target_len)

    seq2seq = task.kind == "seq2seq"
    out = HostEncoded(kind=task.kind, source=None, pad_id=int(tokenizer.pad_token_id),
                      max_source_len=max_source_len or task.max_source_len,
                      max_target_len=(max_target_len or task.max_target_len) if seq2seq else 0,
                      labels=None if seq2seq else table[:, 2].astype(np.int32),
                      encode_rows=encode_rows)
    out.source = LazyRows(table[:, 0], out, "source")
    out.target = LazyRows(table[:, 1], out, "target") if seq2seq else None
    out.token_types = (LazyRows(table[:, 0], out, "token_types")
                       if not seq2seq and every["token_types"].any() else None)
    if encoded is not None:
        out._store(list(block(len(dataset), process_index, process_count)), encoded)
    return out
