"""Checkpoints of Δh (never the base), and one-call saving of a trained Δh for inference.

Training checkpoints (`Checkpointer`, orbax CheckpointManager under WORKDIR/checkpoints):
each step directory holds two items, written atomically (orbax writes a temporary directory
and renames it when complete, so a kill mid-save leaves the previous checkpoint as the
latest) and asynchronously (training goes on while the bytes are written):
  state: TrainState (step, trainable Δh, optimiser state, RNG key data), restored onto the
    shardings of a template state;
  meta:  JSON {method (Method.to_dict), fingerprint (of the base weights), data ({epoch,
    position} of the next batch), step, config (the run's config as JSON)}.
Only the last `keep` checkpoints stay on disk.

Inference files (`save_delta` / `load_delta`): one safetensors file holding the Δh leaves
under '/'-joined paths and, in its header, the method spec (prefix MLPs ejected: stored
prefixes only), the base fingerprint, and how the model was built (num_labels...). Any
safetensors reader (PyTorch too) can open it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np
from flax import traverse_util

from unified_petl.delta.spec import Method, parse_method

FORMAT = "unified-petl-delta/1"


class CheckpointMismatch(ValueError):
    """A Δh or checkpoint that belongs to another base model or method."""


def check_fingerprint(saved: str, base, what: str) -> None:
    """Refuse a Δh trained on other base weights: its numbers would be meaningless there."""
    if saved != base.fingerprint:
        raise CheckpointMismatch(
            f"{what} was trained on a base with fingerprint {saved}, but the base "
            f"{getattr(base, 'path', '') or '(given)'} has fingerprint {base.fingerprint}; "
            "load the base it was trained on (same weights, same random_init seed)")


# ----------------------------------------------------------------------------- training
class Checkpointer:
    """Orbax CheckpointManager for (TrainState, meta) under `directory`."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)  # leftovers of a save killed half-way
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an (async) atomic save of `state` and `meta` as checkpoint `step`."""
        ocp = self._ocp
        self.manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def read_meta(self, step: Optional[int] = None) -> dict:
        step = self.latest_step() if step is None else step
        ocp = self._ocp
        return self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, template: Any, step: Optional[int] = None) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step` (latest by default), laid out like `template`
        (same tree, shapes, dtypes and shardings; its values are not used)."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError) as e:
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} does not fit this run's Δh/optimiser "
                f"({str(e).splitlines()[0][:200]}); use a new workdir or the same config")
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------------------- inference
def _method_of(model_or_method) -> tuple[Method, Optional[dict]]:
    """(method, how to rebuild the model or None) from a built model, a Method or a string."""
    if isinstance(model_or_method, (str, Method)):
        return parse_method(model_or_method), None
    method = model_or_method.method
    build = {"num_labels": int(getattr(model_or_method, "num_labels", 0) or 0),
             "pretrained_head": bool(getattr(model_or_method, "pretrained_head", False)),
             "pooling": str(getattr(model_or_method, "pooling", "cls"))}
    return method, build


def save_delta(path: str, model_or_method, delta: Any, base) -> str:
    """Write a trained Δh to one safetensors file `path` for inference; returns the path.

    model_or_method: the built model (then load_delta rebuilds it) or a Method / preset.
    delta: the `delta` collection; for full fine-tuning {"params": weights, "delta": head}.
    base: the Base it was trained on (its fingerprint is stored). Prefix MLPs are ejected:
    only the prefixes they produce are stored (paper: "only the resulting prefixes").
    """
    from safetensors.numpy import save_file

    from unified_petl.delta.prefix import eject

    method, build = _method_of(model_or_method)
    if method.full:
        if not (isinstance(delta, dict) and "params" in delta):
            raise ValueError("full fine-tuning: pass delta={'params': trained weights, "
                             "'delta': head variables} (the trainer's trainable tree)")
        stored_method, tree = method, delta
    else:
        stored_method, tree = eject(method, delta)
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/") if tree else {}
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
    header = {"format": FORMAT, "method": json.dumps(stored_method.to_dict()),
              "fingerprint": base.fingerprint, "build": json.dumps(build)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=header)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def load_delta(path: str, base, *, dtype=None):
    """(model or method, Δh) from a file written by save_delta, for the base it was trained on.

    Returns the rebuilt model when save_delta was given a model (apply it with
    {"params": base.params, "delta": delta}), else the Method. A base with another
    fingerprint is refused (CheckpointMismatch).
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such Δh file; write one with save_delta")
    with safe_open(path, framework="numpy") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Δh file written by save_delta "
                             f"(format {header.get('format')!r}, expected {FORMAT!r})")
        flat = {k: f.get_tensor(k) for k in f.keys()}
    check_fingerprint(header["fingerprint"], base, f"the Δh in {path}")
    method = Method.from_dict(json.loads(header["method"]))
    delta = traverse_util.unflatten_dict({tuple(k.split("/")): jax.numpy.asarray(v)
                                          for k, v in flat.items()}) if flat else {}
    build = json.loads(header.get("build", "null"))
    if build is None:
        return method, delta
    from unified_petl.build import build as build_model

    kwargs = {} if dtype is None else {"dtype": dtype}
    model = build_model(base.config, method, num_labels=build["num_labels"],
                        pretrained_head=build["pretrained_head"],
                        pooling=build.get("pooling", "cls"), **kwargs)
    return model, delta
