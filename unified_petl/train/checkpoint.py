"""Checkpoints of Δh (never the base), and one-call saving of a trained Δh for inference.

Training checkpoints (`Checkpointer`, orbax CheckpointManager under WORKDIR/checkpoints):
each step directory holds two items, written atomically (orbax writes a temporary directory
and renames it when complete, so a kill mid-save leaves the previous checkpoint as the
latest) and asynchronously (training goes on while the bytes are written):
  state: TrainState (step, trainable Δh, optimiser state, RNG key data), restored onto the
    shardings of a template state;
  meta:  JSON {method (Method.to_dict), fingerprint (of the base weights), data ({epoch,
    position} of the next batch), step, config (the run's config as JSON)}.
Only the last `keep` checkpoints stay on disk. `restore_intact` resumes from the newest
checkpoint that reads back whole: a damaged newer one (a truncated array file, metadata or
meta) is renamed STEP.corrupt, kept for inspection where orbax does not look, with one
warning line; when none reads back, nothing is renamed and the error names them all.

Inference files (`save_delta` / `load_delta`): one safetensors file holding the Δh leaves
under '/'-joined paths and, in its header, the method spec (prefix MLPs ejected: stored
prefixes only), the base fingerprint, and how the model was built (num_labels...). Any
safetensors reader (PyTorch too) can open it.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional

import jax
import numpy as np
from flax import traverse_util

from unified_petl.delta.spec import Method, parse_method
from unified_petl.train import storage

FORMAT = "unified-petl-delta/1"


class CheckpointMismatch(ValueError):
    """A Δh or checkpoint that belongs to another base model or method."""


class CheckpointCorrupt(ValueError):
    """No checkpoint of a directory (or a Δh file) can be read back; the message names them."""


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (orbax / tensorstore write pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def check_fingerprint(saved: str, base, what: str) -> None:
    """Refuse a Δh trained on other base weights: its numbers would be meaningless there."""
    if saved != base.fingerprint:
        raise CheckpointMismatch(
            f"{what} was trained on a base with fingerprint {saved}, but the base "
            f"{getattr(base, 'path', '') or '(given)'} has fingerprint {base.fingerprint}; "
            "load the base it was trained on (same weights, same random_init seed)")


def method_differences(saved: dict, method: Method) -> list[str]:
    """What differs between a stored method spec (Method.to_dict) and `method`: 'term 1
    dropout: 0.0 -> 0.1', ... (empty when they are the same Δh)."""
    old = Method.from_dict(saved)
    if len(old.terms) != len(method.terms):
        return [f"terms: {old.name!r} -> {method.name!r}"]
    out = [] if old.train_head == method.train_head else [
        f"head trained: {old.train_head} -> {method.train_head}"]
    for i, (a, b) in enumerate(zip(old.terms, method.terms), 1):
        da, db = a.to_dict(), b.to_dict()
        out += [f"term {i} ({b.form}) {k}: {_brief(da.get(k))} -> {_brief(db[k])}"
                for k in db if da.get(k) != db[k]]
    return out


def _brief(value) -> str:
    """repr, with a long list (a sparse term's per-leaf counts) summarised."""
    if isinstance(value, list) and len(value) > 6:
        return f"<{len(value)} entries>"
    return repr(value)


def check_method(saved: dict, method: Method, what: str, fix: str) -> None:
    """Refuse a checkpoint of another Δh method, naming what differs (a preset of the same
    name resolves to other settings after a change of its defaults, for instance)."""
    differences = method_differences(saved, method)
    if differences:
        raise CheckpointMismatch(
            f"{what} holds a run of method {saved['name']!r}, not {method.name!r} "
            f"({'; '.join(differences)}); {fix}")


def _drop_closed_loop_noise() -> None:
    """After orbax gives up on a damaged checkpoint, tensorstore still completes the reads it
    had started; their callbacks find orbax's event loop closed, and each prints a traceback
    ('Event loop is closed') as an unraisable exception, burying the one warning line. Drop
    exactly those (the failure itself was already caught); pass anything else on."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop = True
    sys.unraisablehook = hook


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- training
class Checkpointer:
    """Orbax CheckpointManager for (TrainState, meta) under `directory`."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = storage.resolve(directory)  # a local path made absolute, or a URL
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

    def restore_intact(self, template: Any, same_run: Callable[[dict], None]
                       ) -> Optional[tuple[Any, dict]]:
        """(state, meta) of the newest checkpoint that reads back whole, None without any.

        same_run(meta) raises for a checkpoint of another run (base, method, config): that
        is not damage, so it stops the search at once. A checkpoint whose meta or state
        cannot be read is skipped; once an older one has been restored, the skipped newer
        ones are renamed STEP.corrupt with one warning line each. When none can be read,
        nothing is renamed (they may fit another version or config) and CheckpointCorrupt
        names them all.
        """
        from unified_petl.train.writer import warn

        failed = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # truncated JSON, a missing item: any read error
                failed.append((step, f"meta: {_first_line(e)}"))
                continue
            same_run(meta)
            try:
                state, meta = self._restore(template, step)
            except Exception as e:  # tensorstore / orbax errors have no common base class
                _drop_closed_loop_noise()
                failed.append((step, _first_line(e)))
                continue
            for bad, why in failed:
                kept = self.set_aside(bad)
                warn(f"checkpoint {bad} in {self.directory} cannot be read ({why}); resuming "
                     f"from checkpoint {step}; the damaged one is kept as {kept}")
            return state, meta
        if failed:
            listing = "; ".join(f"{step}: {why}" for step, why in failed)
            raise CheckpointCorrupt(
                f"no checkpoint in {self.directory} can be read back ({listing}); nothing "
                "was changed: if they are damaged, move that folder aside to start again "
                "from step 0")
        return None

    def set_aside(self, step: int) -> str:
        """Rename checkpoint `step` to STEP.corrupt[.n] (orbax ignores the name); returns the
        new path. With several processes (one shared directory) process 0 renames while the
        others wait at a barrier on each side: every process picks the same name before the
        rename, and none reloads the list of steps before it is done (a process that
        reloaded early would still see the damaged step and resume from another one)."""
        path = storage.join(self.directory, str(step))
        target, n = path + ".corrupt", 1
        while storage.exists(target):
            n += 1
            target = f"{path}.corrupt.{n}"
        barrier(f"unified_petl_set_aside_{step}_named")
        if jax.process_index() == 0:
            storage.rename(path, target)
        barrier(f"unified_petl_set_aside_{step}_renamed")
        self.manager.reload()
        return target

    def restore(self, template: Any, step: Optional[int] = None) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step` (latest by default), laid out like `template`
        (same tree, shapes, dtypes and shardings; its values are not used)."""
        step = self.latest_step() if step is None else step
        try:
            return self._restore(template, step)
        except (ValueError, KeyError) as e:
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} does not fit this run's Δh/optimiser "
                f"({str(e).splitlines()[0][:200]}); use a new workdir or the same config")

    def _restore(self, template: Any, step: int) -> tuple[Any, dict]:
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
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


def save_delta(path: str, model_or_method, delta: Any, base, *,
               step: Optional[int] = None) -> str:
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
    if step is not None:  # the training step of this Δh (the trainer's files)
        header["step"] = str(int(step))
    storage.makedirs(storage.resolve(path).rsplit("/", 1)[0])
    with storage.upload(path) as local:  # whole: a reader never sees half a file
        save_file(tensors, local, metadata=header)
    return path


def read_delta_file(path: str) -> tuple[dict, dict]:
    """(header, {'/'-joined path: array}) of a save_delta file; one line when it is missing,
    damaged (truncated, not safetensors) or not a Δh file."""
    from safetensors import safe_open

    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: no such Δh file; write one with save_delta")
    try:
        with storage.local_copy(path) as local, safe_open(local, framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"{path} is not a Δh file written by save_delta "
                                 f"(format {header.get('format')!r}, expected {FORMAT!r})")
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:  # SafetensorError (truncated or not safetensors), OSError
        raise CheckpointCorrupt(f"{path}: cannot read the Δh ({_first_line(e)}); the file is "
                                "damaged or incomplete") from None
    return header, flat


def delta_file_problem(path: str) -> Optional[str]:
    """None when `path` reads back as a Δh file, else why not (one line)."""
    try:
        read_delta_file(path)
    except (ValueError, OSError) as e:
        return str(e)
    return None


def load_delta(path: str, base, *, dtype=None):
    """(model or method, Δh) from a file written by save_delta, for the base it was trained on.

    Returns the rebuilt model when save_delta was given a model (apply it with
    {"params": base.params, "delta": delta}), else the Method. A base with another
    fingerprint is refused (CheckpointMismatch); a damaged file is CheckpointCorrupt.
    """
    header, flat = read_delta_file(path)
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
