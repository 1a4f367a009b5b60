"""Where each Δh leaf of our tree sits in transformers' PyTorch module tree.

Both exchange formats name weights by transformers' module paths (PEFT:
`base_model.model.<module>.lora_A.weight`; AdapterHub: `<module>.adapters.<name>....`). Our
parameter paths map to transformers' keys one to one (`models.loading.hf_key`), so a Δh site
such as `encoder/layers_0/self_attn/q_proj` is `model.encoder.layers.0.self_attn.q_proj` in
`BartForConditionalGeneration`.

`prepare` turns (a built model or a method, a Δh tree, its base) into an `Export`: the
resolved method with prefix MLPs ejected (only the prefixes they produce are exchanged, as
`save_delta` stores them), the flat Δh, and the transformers class the other library loads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
from flax import traverse_util

from unified_petl.delta.spec import Method, SpecError

# model kind -> (transformers class with a classification head, without, body prefix with head)
HF_CLASSES = {
    "bart": ("BartForConditionalGeneration", "BartForConditionalGeneration", "model."),
    "mbart": ("MBartForConditionalGeneration", "MBartForConditionalGeneration", "model."),
    "roberta": ("RobertaForSequenceClassification", "RobertaModel", "roberta."),
    "bert": ("BertForSequenceClassification", "BertModel", "bert."),
}


class ExchangeError(SpecError):
    """A Δh that a format cannot hold, or a folder that is not an adapter we can read; the
    message is one line that says what and how to go on."""


@dataclasses.dataclass
class Export:
    """A Δh ready to be written in another library's layout.

    model: the built Flax model, its method resolved and prefix MLPs ejected.
    delta: {path tuple: float32 array [our layout, kernels [d_in, d_out]]}.
    base: the Base it was trained on (frozen weights, config, path).
    """

    model: Any
    delta: dict
    base: Any

    @property
    def method(self) -> Method:
        return self.model.method

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def new_head(self) -> bool:
        """A task head that lives in Δh (trained, or frozen at its random init)."""
        return any(is_head(p) for p in self.delta)

    @property
    def num_labels(self) -> int:
        return int(getattr(self.model, "num_labels", 0) or 0)

    @property
    def hf_class(self) -> str:
        with_head, without, _ = HF_CLASSES[self.cfg.kind]
        return with_head if self.cfg.seq2seq or self.num_labels else without

    @property
    def body(self) -> str:
        """The prefix of the body's modules in `hf_class` ('model.', 'roberta.' or '')."""
        _, _, body = HF_CLASSES[self.cfg.kind]
        return body if self.cfg.seq2seq or self.num_labels else ""

    @property
    def base_name(self) -> str:
        return str(getattr(self.base, "path", "") or getattr(self.base.config, "_name_or_path",
                                                             ""))

    def module(self, site: tuple[str, ...]) -> str:
        """Our module path -> transformers module name in `hf_class`."""
        return self.body + module_name(site, self.cfg.seq2seq)

    def frozen(self, site: tuple[str, ...], leaf: str = "kernel") -> np.ndarray:
        """A frozen base weight of our tree (kernels [d_in, d_out])."""
        flat = traverse_util.flatten_dict(self.base.params)
        return np.asarray(flat[site + (leaf,)], np.float32)

    def head_tensors(self) -> dict[str, np.ndarray]:
        """The new task head as transformers keys (without a body prefix, e.g.
        'classifier.dense.weight') in PyTorch layout ([d_out, d_in] weights)."""
        from unified_petl.models.loading import hf_key

        out = {}
        for path, value in self.delta.items():
            if is_head(path):
                out[hf_key(path, False)] = value.T if path[-1] == "kernel" else value
        return out

    def refuse(self, fmt: str, why: str) -> ExchangeError:
        return ExchangeError(f"cannot export method {self.method.name!r} to {fmt}: {why}")


def is_head(path: tuple[str, ...]) -> bool:
    return path[0].startswith("classifier")


def module_name(site: tuple[str, ...], seq2seq: bool) -> str:
    """Our module path -> transformers module name without the body prefix."""
    from unified_petl.models.loading import hf_key

    return hf_key(site + ("kernel",), seq2seq).removesuffix(".weight")


def _model(model_or_method, delta: dict, base):
    """The built model: as given, or built from a Method / preset string on base.config with
    the head the Δh tree holds (none: the checkpoint's head, if it has one)."""
    from unified_petl.build import build

    if not isinstance(model_or_method, (str, Method)):
        return model_or_method
    head = delta.get("classifier_out_proj") or delta.get("classifier")
    if head is not None:
        return build(base.config, model_or_method, num_labels=int(head["kernel"].shape[1]),
                     pretrained_head=False)
    return build(base.config, model_or_method)


def prepare(model_or_method, delta: Any, base, fmt: str) -> Export:
    """Check and flatten a Δh for export (see the module docstring).

    model_or_method: a model built by `unified_petl.build` (as `load_delta` returns it), or a
    Method / preset string (then built on base.config with the head the Δh holds).
    delta: the `delta` collection. Refused (ExchangeError): full fine-tuning, a model kind
    neither format knows, a Δh tree that does not fit the method's shapes.
    """
    from unified_petl.build import shape_tree
    from unified_petl.delta.prefix import eject

    model = _model(model_or_method, delta, base)
    method = model.method
    if method.full:
        raise ExchangeError(f"cannot export method {method.name!r} to {fmt}: full fine-tuning "
                            "changes every weight; save the model with transformers instead")
    if model.cfg.kind not in HF_CLASSES:
        raise ExchangeError(f"cannot export a {model.cfg.kind} model to {fmt}")
    if getattr(model, "pooling", "cls") != "cls":
        raise ExchangeError(f"cannot export method {method.name!r} to {fmt}: its head reads "
                            "the mean over tokens (pooling='mean'), transformers' heads read "
                            "the first token")
    ejected, tree = eject(method, delta)
    model = model.clone(method=ejected)
    flat = {p: np.asarray(jax.device_get(v), np.float32)
            for p, v in traverse_util.flatten_dict(tree).items()} if tree else {}
    expected = {p: tuple(s.shape) for p, s in
                traverse_util.flatten_dict(shape_tree(model, "delta")).items()}
    got = {p: tuple(v.shape) for p, v in flat.items()}
    if got != expected:
        differ = sorted("/".join(p) for p in set(got) ^ set(expected))
        differ += sorted("/".join(p) for p in set(got) & set(expected) if got[p] != expected[p])
        raise ExchangeError(f"the Δh tree does not fit method {method.name!r} on this base "
                            f"(differs at {', '.join(differ[:4])}); pass the model load_delta "
                            "returned with its Δh")
    return Export(model=model, delta=flat, base=base)


def sites(flat: dict, leaf: str) -> list[tuple[str, ...]]:
    """The module paths that hold a `leaf` variable (e.g. 'lora_a', 'down_kernel'), sorted."""
    return sorted({p[:-1] for p in flat if p[-1] == leaf})


def leaf_of(flat: dict, site: tuple[str, ...], name: str) -> Optional[np.ndarray]:
    return flat.get(site + (name,))
