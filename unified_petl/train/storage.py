"""Where a workdir lives: a local folder, or a cloud storage URL (gs://bucket/runs/x) read and
written through etils.epath, the path library orbax itself uses for checkpoints.

Every file of a workdir the trainer, `eval` and `predict` write or read outside orbax
(metrics.jsonl, config.json, results.json, best/, delta.safetensors, eval results,
predictions) goes through these functions, so that a `gs://` workdir holds the same files as a
local one. Local paths take the same code path (epath.Path over the local file system).

What differs on object storage, and how it is handled:
  - a file is written whole: atomic renames do not exist (a rename is a copy and a delete),
    but an object upload is atomic (readers see the old or the new object), so `write_bytes`
    uploads directly, while locally it writes PATH.tmp and renames it;
  - objects cannot be appended to: `append_text` rewrites the object (metrics.jsonl is small);
  - libraries that need a local file (safetensors) get a temporary copy (`local_copy`,
    `upload`).
gs:// needs a file-system backend for epath: `gcsfs` (pip install gcsfs, the `gcs` extra) or
TensorFlow's gfile; orbax writes the checkpoint arrays with TensorStore's own GCS driver.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def is_remote(path) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def resolve(path) -> str:
    """An absolute local path, or the URL unchanged (os.path.abspath would turn
    gs://bucket/x into CWD/gs:/bucket/x)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def join(path, *names) -> str:
    return "/".join([os.fspath(path).rstrip("/"), *names]) if is_remote(path) else \
        os.path.join(path, *names)


def epath(path):
    from etils import epath as epath_lib

    return epath_lib.Path(resolve(path))


def exists(path) -> bool:
    return epath(path).exists()


def isfile(path) -> bool:
    return epath(path).is_file()


def isdir(path) -> bool:
    return epath(path).is_dir()


def makedirs(path) -> None:
    epath(path).mkdir(parents=True, exist_ok=True)


def read_bytes(path) -> bytes:
    return epath(path).read_bytes()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Write `path` whole; a reader never sees half a file (see the module docstring)."""
    target = epath(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        target.write_bytes(data)
        return
    tmp = target.parent / (target.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    finally:
        if tmp.exists():  # a failed write leaves nothing behind
            tmp.unlink()


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_bytes(path, data: bytes) -> None:
    """Add `data` at the end of `path` (created if missing): a local append, or the object
    rewritten with it."""
    if is_remote(path):
        old = read_bytes(path) if exists(path) else b""
        write_bytes(path, old + data)
        return
    with open(path, "ab") as f:
        f.write(data)


def append_text(path, text: str) -> None:
    append_bytes(path, text.encode("utf-8"))


def lines(data: bytes) -> list[bytes]:
    """`data` cut after each b"\\n" (as iterating a file opened "rb" does)."""
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def rename(path, target) -> None:
    """Move a file or folder (on object storage: copied, then deleted)."""
    epath(path).rename(epath(target))


def remove(path) -> None:
    if exists(path):
        epath(path).unlink()


def check_writable(folder) -> None:
    """Create `folder` and write a file there, or raise OSError."""
    import uuid

    makedirs(folder)
    probe = epath(join(folder, f".write-test-{uuid.uuid4().hex}"))
    probe.write_bytes(b"")
    probe.unlink()


@contextlib.contextmanager
def local_copy(path) -> Iterator[str]:
    """A local file name holding `path`'s bytes: the path itself when local, else a temporary
    download."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    folder = tempfile.mkdtemp(prefix="unified-petl-")
    try:
        local = os.path.join(folder, os.path.basename(os.fspath(path)))
        with open(local, "wb") as f:
            f.write(read_bytes(path))
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def upload(path) -> Iterator[str]:
    """A local file name to write; on leaving the block it becomes `path` (uploaded whole,
    or locally renamed into place). Nothing is written if the block raises."""
    folder = tempfile.mkdtemp(prefix="unified-petl-", dir=None if is_remote(path) else
                              os.path.dirname(os.path.abspath(path)) or None)
    try:
        local = os.path.join(folder, os.path.basename(os.fspath(path)))
        yield local
        if is_remote(path):
            with open(local, "rb") as f:
                write_bytes(path, f.read())
        else:
            os.replace(local, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
