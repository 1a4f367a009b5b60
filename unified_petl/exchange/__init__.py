"""A Δh in and out of the PyTorch libraries: Hugging Face PEFT and AdapterHub (`adapters`).

    up.export_delta(model, delta, base, "out/peft", format="peft")      # LoRA
    up.export_delta(model, delta, base, "out/ah", format="adapters")    # adapters, prefix, MAM
    model, delta = up.import_delta("path/or/hub-id", base)              # a PEFT LoRA adapter

Export writes the other library's own folder layout, with the settings under which it computes
our function (module docstrings of `exchange.peft` and `exchange.adapterhub` say which, with
file pointers); a term the format cannot hold is refused with one line (ExchangeError), never
dropped. `unified-petl export --workdir W --format peft|adapters --out DIR [--best]` does the
same for a training run.

Import returns (model, Δh) as `load_delta` does: apply with {"params": base.params,
"delta": delta}. To train it further, start the trainer's step from it (the CLI trainer has
no option to start from a given Δh; this is the Python path):

    from unified_petl.train import optim, step
    trainable, frozen = step.split_trainable(False, base.params, delta)
    optimizer, schedule = optim.make_optimizer(config.optim, total_steps)
    state = step.init_state(trainable, optimizer, seed, mesh)   # then step.make_train_step
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from unified_petl.delta.spec import parse_method
from unified_petl.exchange.sites import ExchangeError, prepare

FORMATS = ("peft", "adapters")


def export_delta(model_or_method, delta: Any, base, out_dir: str, *, format: str = "peft",
                 name: str = "unified_petl") -> list[str]:
    """Write Δh `delta` of `model_or_method` (the model load_delta returns, or a Method /
    preset string) trained on `base` as a PEFT ("peft") or AdapterHub ("adapters") adapter
    folder `out_dir`; returns the file names written.

    `out_dir` must not exist or be empty (nothing is overwritten); the folder appears whole
    or not at all. `base` must be the checkpoint the PyTorch side loads (a run on re-initialised
    weights has nothing to load there). name: the AdapterHub adapter name.
    """
    from unified_petl.exchange import adapterhub, peft

    if format not in FORMATS:
        raise ExchangeError(f"unknown export format {format!r}; use peft or adapters")
    _check_out(out_dir)
    ex = prepare(model_or_method, delta, base, "PEFT" if format == "peft" else "AdapterHub")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        files = peft.write(ex, tmp) if format == "peft" else adapterhub.write(ex, tmp, name)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return files


def export_run(config, workdir: str, out_dir: str, *, format: str, best: bool = False,
               base=None) -> dict:
    """Export the latest checkpoint (best=True: the selected Δh) of training run `workdir`
    (its config, e.g. WORKDIR/config.json) with `export_delta`. Returns {"format", "out",
    "files", "step", "selected", "method"}. Refused before any loading: an unknown format, an
    --out that is not new, a run on re-initialised weights or with base_overrides that change
    the function, full fine-tuning."""
    import jax

    from unified_petl.train.config import check_config, with_defaults
    from unified_petl.train.inference import restore
    from unified_petl.train.loop import _setup_devices
    from unified_petl.train.setup import build_run
    from unified_petl.train.step import variables

    if format not in FORMATS:
        raise ExchangeError(f"unknown export format {format!r}; use peft or adapters")
    _check_out(out_dir)
    config = with_defaults(config)
    check_config(config)
    if config.random_init:
        raise ExchangeError("this run trained on re-initialised base weights (random_init): "
                            "PEFT and AdapterHub load the pretrained checkpoint, on which this "
                            "Δh means nothing")
    changed = sorted(k for k in (config.get("base_overrides") or {}) if "dropout" not in k)
    if changed:
        raise ExchangeError(f"this run changed the base's {', '.join(changed)} "
                            "(base_overrides); the exported adapter would run on the "
                            "unchanged checkpoint")
    if parse_method(config.method).full:
        raise ExchangeError("cannot export full fine-tuning: it changes every weight; save "
                            "the model with transformers instead")
    mesh = _setup_devices(config)
    run = build_run(config, base)
    run, trainable, frozen, step = restore(config, workdir, run, mesh, best=best)
    delta = jax.device_get(variables(False, trainable, frozen)["delta"])
    files = export_delta(run.model, delta, run.base, out_dir, format=format)
    return {"format": format, "out": out_dir, "files": files, "step": step, "selected": best,
            "method": run.model.method.name}


def _check_out(out_dir: str) -> None:
    if os.path.isfile(out_dir) or (os.path.isdir(out_dir) and os.listdir(out_dir)):
        raise ExchangeError(f"{out_dir} exists and is not an empty folder; give a new --out "
                            "folder (nothing is overwritten)")


def import_delta(source: str, base) -> tuple[Any, Any]:
    """A PEFT LoRA adapter (a folder written by save_pretrained, or a hub id when online) ->
    (model built on base.config with its `lora(...)` method, Δh tree). See the module
    docstring for evaluating and training it further. Raises ExchangeError (one line)."""
    from unified_petl.exchange import peft

    folder = _resolve(str(source))
    if not os.path.isfile(os.path.join(folder, peft.CONFIG)):
        raise ExchangeError(f"{source} has no {peft.CONFIG}; give a folder written by PEFT's "
                            "save_pretrained (or its hub id)")
    return peft.read(folder, base)


def _resolve(source: str) -> str:
    if os.path.isdir(source):
        return source
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ExchangeError(f"{source!r} is not a local folder and HF_HUB_OFFLINE=1; give the "
                            "adapter's folder, or go online to read it from the hub")
    from huggingface_hub import snapshot_download

    from unified_petl.exchange import peft

    try:
        return snapshot_download(source, allow_patterns=[peft.CONFIG, peft.WEIGHTS,
                                                         peft.TORCH_WEIGHTS])
    except Exception as e:  # not found, no network, a malformed id
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExchangeError(f"cannot read adapter {source!r} from the hub ({first})") from None


__all__ = ["export_delta", "export_run", "import_delta", "ExchangeError", "FORMATS"]
