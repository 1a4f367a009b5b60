"""Masks of individual weights: which entries a sparse Δh trains (or Child-Tuning_D updates).

    mask = up.masks.compute(base, "sparse(density=0.005, mask=magnitude)", num_labels=2)
    model = up.build(base.config, mask.attach("sparse(density=0.005, mask=magnitude)"), ...)
    delta = up.init_delta(model, key, params=params, masks=mask)
    mask.save("MASK.safetensors"); mask = up.masks.SparseMask.load("MASK.safetensors", base)

Criteria (scores per weight; the mask is the top k, see `select`):
  random     uniform scores from a seeded generator (the usual baseline);
  magnitude  |W|: the largest pretrained weights;
  fisher     the empirical Fisher information F_i = Σ_n (∂ log p(y_n|x_n) / ∂θ_i)² over the
             first N training examples, each example's gradient alone (unified_petl.train.
             fisher; computed by the trainer or `unified-petl mask`, it needs the task's data).
The top k is taken over all candidate weights (select=global, the new head inside the budget,
as FISH) or within every leaf (per_leaf); ties go to the lower flat position, so a mask is a
pure function of its scores.

File format (safetensors, readable by any safetensors reader): one bool tensor per candidate
leaf, named by its '/'-joined path in the `params` tree, 1 = trained; metadata: format,
fingerprint (of the base weights: a mask for another base is refused), criterion, density,
num_examples (N, Fisher), select, pattern, head (new-head parameters inside the budget), k.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from unified_petl.delta import sparse as sparse_lib
from unified_petl.delta.spec import Method, parse_method

FORMAT = "unified-petl-mask/1"
CRITERIA = ("random", "magnitude", "fisher")


@dataclasses.dataclass
class SparseMask:
    """Boolean masks {'/'-joined params path: bool [leaf shape]} of one base, and how they were
    made. Leaves of the candidate set with nothing selected are kept (all False)."""

    masks: dict[str, np.ndarray]
    fingerprint: str
    criterion: str
    density: float
    num_examples: int = 0
    select: str = "global"
    pattern: str = ""
    head: int = 0

    @property
    def k(self) -> int:
        """Selected weights in total."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def counts(self) -> tuple[tuple[str, int], ...]:
        """((path, k), ...) of the leaves with k > 0, sorted: what Term.counts holds."""
        return tuple((p, int(m.sum())) for p, m in sorted(self.masks.items()) if m.any())

    def indices(self) -> dict[str, np.ndarray]:
        """{path: sorted flat positions int32 [k]} of the leaves with k > 0."""
        return {p: np.flatnonzero(m.reshape(-1)).astype(np.int32)
                for p, m in sorted(self.masks.items()) if m.any()}

    def grad_mask(self) -> dict[str, np.ndarray]:
        """{'params/' + path: bool mask}: Child-Tuning_D's gradient mask over the trainable
        tree of full fine-tuning ({"params": weights, "delta": head})."""
        return {"params/" + p: m for p, m in sorted(self.masks.items())}

    def attach(self, method: "str | Method") -> Method:
        """`method` with its sparse term's counts (and, for mask=file without a density, the
        file's density) filled in from this mask; other methods are returned unchanged."""
        method = parse_method(method) if isinstance(method, str) else method
        term = method.sparse
        if term is None:
            return method
        new = dataclasses.replace(term, counts=self.counts(),
                                  density=term.density or float(self.density))
        return dataclasses.replace(method, terms=tuple(new if t is term else t
                                                       for t in method.terms)).validate()

    # ------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "fingerprint": self.fingerprint, "criterion": self.criterion,
                "density": repr(float(self.density)), "num_examples": str(self.num_examples),
                "select": self.select, "pattern": self.pattern, "head": str(self.head),
                "k": str(self.k)}

    def save(self, path: str) -> str:
        """Write the mask file (atomically: a reader never sees half a file)."""
        from safetensors.numpy import save_file

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        save_file({p: np.ascontiguousarray(m, dtype=bool) for p, m in self.masks.items()}, tmp,
                  metadata=self.metadata())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str, base=None) -> "SparseMask":
        """Read a mask file; with `base`, refuse a mask made for other base weights."""
        from safetensors import safe_open

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such mask file; make one with "
                                    "`unified-petl mask --config C --criterion fisher ...`")
        try:
            with safe_open(path, framework="numpy") as f:
                meta = f.metadata() or {}
                masks = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # not safetensors at all
            raise ValueError(f"{path} is not a mask file: {str(e).splitlines()[0]}") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a mask file written by unified-petl (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
        mask = cls(masks={k: np.asarray(v).astype(bool) for k, v in masks.items()},
                   fingerprint=meta["fingerprint"], criterion=meta["criterion"],
                   density=float(meta["density"]), num_examples=int(meta["num_examples"]),
                   select=meta["select"], pattern=meta["pattern"], head=int(meta["head"]))
        if base is not None:
            mask.check_base(base, path)
        return mask

    def check_base(self, base, where: str = "the mask") -> None:
        from unified_petl.train.checkpoint import CheckpointMismatch

        if self.fingerprint != base.fingerprint:
            raise CheckpointMismatch(
                f"{where} was computed for a base with fingerprint {self.fingerprint}, not "
                f"{getattr(base, 'path', '') or 'this base'} ({base.fingerprint}); compute a "
                "mask for this base with `unified-petl mask`")

    def check_shapes(self, shapes: Mapping[str, tuple], where: str = "the mask") -> None:
        """Every mask leaf must be a candidate weight of the model, with its shape."""
        for path, m in self.masks.items():
            if path not in shapes or not sparse_lib.is_candidate(path):
                raise ValueError(f"{where} has a leaf {path} that is not a weight this model "
                                 "can train sparsely; it was made for another architecture")
            if tuple(m.shape) != tuple(shapes[path]):
                raise ValueError(f"{where}: {path} is {tuple(m.shape)}, the model's weight "
                                 f"{tuple(shapes[path])}")


# ----------------------------------------------------------------------------- selection
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """bool mask of the k largest entries of a flat score vector; ties to the lower index."""
    flat = np.asarray(scores).reshape(-1)
    n = flat.size
    k = int(min(max(k, 0), n))
    out = np.zeros(n, bool)
    if k == 0:
        return out
    threshold = np.partition(flat, n - k)[n - k]  # the k-th largest value
    above = flat > threshold
    out[above] = True
    out[np.flatnonzero(flat == threshold)[:k - int(above.sum())]] = True
    return out


def select(scores: Mapping[str, np.ndarray], density: float, how: str = "global",
           head: int = 0) -> dict[str, np.ndarray]:
    """{path: bool mask} from {path: scores} (candidate leaves only), with the budget of
    `delta.sparse.budget` (global: the head inside it)."""
    paths = sorted(scores)
    sizes = {p: int(np.size(scores[p])) for p in paths}
    k = sparse_lib.budget(density, how, sizes, head)
    if how == "per_leaf":
        return {p: top_k(scores[p], k[p]).reshape(np.shape(scores[p])) for p in paths}
    flat = np.concatenate([np.asarray(scores[p], np.float32).reshape(-1) for p in paths])
    chosen, out, start = top_k(flat, k), {}, 0
    for p in paths:
        out[p] = chosen[start:start + sizes[p]].reshape(np.shape(scores[p]))
        start += sizes[p]
    return out


def random_scores(shapes: Mapping[str, tuple], seed: int) -> dict[str, np.ndarray]:
    """Uniform scores in [0, 1), one generator seeded by `seed`, leaves in sorted path order."""
    rng = np.random.default_rng(seed)
    return {p: rng.random(shapes[p], dtype=np.float32) for p in sorted(shapes)}


def magnitude_scores(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """|W| of every given leaf ({path: array})."""
    return {p: np.abs(np.asarray(v, np.float32)) for p, v in params.items()}


def from_scores(scores: Mapping[str, np.ndarray], *, fingerprint: str, criterion: str,
                density: float, how: str = "global", head: int = 0, num_examples: int = 0,
                pattern: str = "") -> SparseMask:
    """The SparseMask of the top entries of `scores` (see `select`)."""
    return SparseMask(masks=select(scores, density, how, head), fingerprint=fingerprint,
                      criterion=criterion, density=float(density), num_examples=num_examples,
                      select=how, pattern=pattern, head=head)


def compute(base, method: "str | Method", *, num_labels: int = 0, seed: int = 0,
            params: Any = None, fisher: Optional[Mapping[str, np.ndarray]] = None,
            head: Optional[int] = None) -> SparseMask:
    """The mask of the sparse term (or Child-Tuning_D term) of `method` on `base`.

    random / magnitude need only the base; fisher needs the scores (`fisher=`, from
    unified_petl.train.fisher.fisher_scores, or let the trainer / `unified-petl mask` compute
    them). params: the frozen tree the model uses (default base.params). head: new-head
    parameters inside a global budget (default: the trained head of a model with
    `num_labels` labels; 0 for Child-Tuning_D, whose head is never masked).
    """
    from unified_petl.build import build, shape_tree

    method = parse_method(method) if isinstance(method, str) else method
    term = method.sparse or method.grad_mask
    if term is None:
        raise ValueError(f"method {method.name!r} has no sparse or Child-Tuning_D term")
    if term.mask not in CRITERIA:
        raise ValueError(f"criterion {term.mask!r} cannot be computed; use "
                         f"{', '.join(CRITERIA)} (a mask=file is loaded with SparseMask.load)")
    params = base.params if params is None else params
    flat = {k: v for k, v in _flat(params).items()}
    paths = sparse_lib.candidates({p: np.shape(v) for p, v in flat.items()}, term.pattern)
    if not paths:
        raise ValueError(f"pattern {term.pattern!r} matches no weight of this base")
    if head is None:
        head = 0
        if (method.sparse is not None and num_labels and method.train_head
                and method.sparse.head_in_budget):
            model = build(base.config, Method(name="none"), num_labels=num_labels,
                          pretrained_head=False)
            head = sum(int(np.prod(v.shape)) for v in _flat(shape_tree(model, "delta")).values())
    if term.mask == "random":
        scores = random_scores({p: np.shape(flat[p]) for p in paths}, seed)
    elif term.mask == "magnitude":
        scores = magnitude_scores({p: flat[p] for p in paths})
    else:
        if fisher is None:
            raise ValueError("the fisher criterion needs the Fisher scores of the task's "
                             "training data: pass fisher= or use the trainer / "
                             "`unified-petl mask`")
        scores = {p: np.asarray(fisher[p]) for p in paths}
    return from_scores(scores, fingerprint=base.fingerprint, criterion=term.mask,
                       density=term.density, how=term.select, head=head,
                       num_examples=term.num_examples if term.mask == "fisher" else 0,
                       pattern=term.pattern)


def _flat(tree: Any) -> dict[str, Any]:
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/") if tree else {}


def describe(mask: SparseMask) -> str:
    """One JSON line: criterion, density, k, head and the leaves with a selection."""
    return json.dumps({"criterion": mask.criterion, "density": mask.density, "k": mask.k,
                       "head": mask.head, "leaves": len(mask.counts()),
                       "num_examples": mask.num_examples, "select": mask.select})
