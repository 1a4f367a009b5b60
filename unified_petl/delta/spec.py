"""The Δh design space: one term per point of the paper's four axes, methods as tuples of terms.

A *term* is one Δh: its functional form (prefix attention, bottleneck adapter, LoRA, plus the
degenerate forms prompt / masked offsets / full), the representation it modifies (attention heads,
attention sub-layer, FFN sub-layer), the insertion form (sequential / parallel), the composition
(add / scaled / gated), its size (l or r) and a few options. A *method* is a tuple of terms.

Presets are strings shared by configs and the CLI::

    parse_method("mam(l=30, r=512, s=4)")
    parse_method("prefix(l=30) + pa(r=512, at=ffn)")   # any sum of presets

`Method.validate` refuses combinations that make no sense with one clear line.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

FORMS = ("prefix", "adapter", "lora", "prompt", "masked", "full", "sparse", "diff")
AT = ("heads", "attn", "ffn", "embed", "params")
INSERTIONS = ("parallel", "sequential")
COMPOSITIONS = ("add", "scaled", "gated")
INITS = ("bert", "lora")
LAYERNORMS = ("none", "in", "out")
LORA_TARGETS = ("q", "k", "v", "o", "fc1", "fc2")
SPARSE_MASKS = ("random", "magnitude", "fisher", "file")  # how a sparse term picks its weights
CHILD_MASKS = ("fisher", "bernoulli")  # Child-Tuning_D / _F gradient masks of `full`
SELECTS = ("global", "per_leaf")


class SpecError(ValueError):
    """A Δh spec that makes no sense; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Term:
    """One Δh term.

    form: prefix | adapter | lora | prompt | masked | full.
    at: modified representation: heads (prefix, multi-head PA), attn (attention sub-layer),
      ffn (FFN sub-layer), embed (prompt), params (masked / full).
    insertion: parallel (Δh from the sub-layer input x) or sequential (from h itself).
    composition: add (h + Δh), scaled (h + s·Δh), gated ((1-λ)h + λΔh, prefix softmax mass).
    size: l for prefix / prompt, r for adapter / LoRA.
    scale: s of the scaled composition (LoRA: alpha / r); learn_scale makes s a variable (init s).
    init: bert (N(0, 0.02), bias 0) or lora (down kaiming-uniform, up 0: starts as the base).
    layernorm: adapter layernorm in / out / none.
    dropout: dropout inside the Δh module (adapter hidden, LoRA input, prefix none).
    mlp: prefix MLP reparameterisation (training only; `eject` turns it into plain prefixes).
    mlp_hidden: width of that MLP (800 in the paper).
    targets: LoRA projections (q, k, v, o, fc1, fc2).
    pattern: masked: regex over '/'-joined parameter paths (e.g. '.*bias').
    explicit_gate: prefix: compute (1-λ)·Attn + λ·softmax(q P_k^T) P_v term by term instead of
      concatenating P_k, P_v to K, V (the same function, paper eq. 5-7; exposes λ).

    Element-wise sparse Δh (unified_petl.delta.sparse, unified_petl.masks):
    density: fraction of the candidate weights a sparse / diff term trains (full: the kept
      fraction p of Child-Tuning's gradient mask).
    mask: how the weights are chosen: random | magnitude | fisher | file (sparse); fisher
      (Child-Tuning_D) | bernoulli (Child-Tuning_F) for a `full` term.
    path: the mask file of mask=file. pattern (also): regex restricting the candidate leaves.
    select: global (top k over all candidates) or per_leaf (top density of every leaf).
    head_in_budget: with select=global the new task head is trained inside the budget, k =
      round(density × (weights + head)) - head (FISH); false: k = round(density × weights),
      the head on top (this project's usual accounting of a new head).
    num_examples: N training examples of the Fisher information.
    counts: the resolved number of trained values per '/'-joined `params` path, ((path, k),
      ...): static shapes for jit, filled in when the mask is resolved (masks.SparseMask).
    gate: diff pruning's hard-concrete gates (lower, upper, beta, log_alpha init, structured:
      1.0 adds one gate per weight tensor); gate_lr: their learning rate; l0: the coefficient
      of the expected-L0 penalty; steps: stage-1 (gated) steps; lr: stage-2 learning rate
      (0: the config's optim.lr).
    """

    form: str
    at: str
    insertion: str = "parallel"
    composition: str = "add"
    size: int = 0
    scale: float = 1.0
    learn_scale: bool = False
    init: str = "bert"
    layernorm: str = "none"
    dropout: float = 0.0
    mlp: bool = False
    mlp_hidden: int = 800
    targets: tuple[str, ...] = ()
    pattern: str = ""
    explicit_gate: bool = False
    density: float = 0.0
    mask: str = ""
    path: str = ""
    select: str = "global"
    head_in_budget: bool = True
    num_examples: int = 0
    counts: tuple[tuple[str, int], ...] = ()
    gate: tuple[float, ...] = ()
    gate_lr: float = 0.0
    l0: float = 0.0
    steps: int = 0
    lr: float = 0.0

    def validate(self) -> None:
        def bad(msg):
            raise SpecError(f"invalid Δh term {self.short()}: {msg}")

        if self.form not in FORMS:
            bad(f"unknown form {self.form!r}; use one of {', '.join(FORMS)}")
        if self.at not in AT:
            bad(f"unknown modified representation at={self.at!r}; use one of {', '.join(AT)}")
        if self.insertion not in INSERTIONS:
            bad(f"unknown insertion {self.insertion!r}; use parallel or sequential")
        if self.composition not in COMPOSITIONS:
            bad(f"unknown composition {self.composition!r}; use add, scaled or gated")
        if self.init not in INITS:
            bad(f"unknown init {self.init!r}; use bert or lora")
        if self.layernorm not in LAYERNORMS:
            bad(f"unknown layernorm {self.layernorm!r}; use in, out or none")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout={self.dropout} must be in [0, 1)")
        if self.form in ("prefix", "adapter", "lora", "prompt") and self.size <= 0:
            what = "l (prefix length)" if self.form in ("prefix", "prompt") else "r (bottleneck)"
            bad(f"{what} must be > 0, got {self.size}")
        if self.mlp and (self.form != "prefix" or self.mlp_hidden <= 0):
            bad("mlp reparameterisation needs a prefix term and mlp_hidden > 0")
        if self.explicit_gate and (self.form != "prefix" or self.composition != "gated"):
            bad("explicit_gate is an option of the gated prefix only")
        if self.composition == "gated" and self.form != "prefix":
            bad("gated composition needs a prefix softmax (λ is the prefix attention mass); "
                "use add or scaled for adapters and LoRA")
        if self.form == "prefix":
            if self.at != "heads":
                bad("prefix attention modifies the attention heads; use at=heads")
            if self.composition == "scaled":
                bad("prefix composition is gated (concatenation) or add (ungated ablation)")
        if self.form == "adapter":
            if self.at not in ("heads", "attn", "ffn"):
                bad("adapters modify heads, attn or ffn")
            if self.at == "heads" and self.insertion != "parallel":
                bad("the multi-head adapter (at=heads) is parallel only")
            if self.at == "heads" and self.layernorm != "none":
                bad("the multi-head adapter has no layernorm option")
        if self.form == "lora":
            if not self.targets:
                bad("LoRA needs targets (q, k, v, o, fc1, fc2)")
            unknown = [t for t in self.targets if t not in LORA_TARGETS]
            if unknown:
                bad(f"unknown LoRA targets {unknown}; use {', '.join(LORA_TARGETS)}")
            if self.insertion != "parallel":
                bad("LoRA is parallel to the frozen projection by construction")
        if self.form == "prompt" and self.at != "embed":
            bad("prompt tuning modifies the input embeddings; use at=embed")
        if self.form == "masked":
            if not self.pattern:
                bad("masked needs pattern=REGEX over parameter paths, e.g. '.*bias'")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as e:
                bad(f"pattern {self.pattern!r} is not a regex: {e}")
        if self.form in ("sparse", "diff") or self.mask:
            self._validate_sparse(bad)

    def _validate_sparse(self, bad) -> None:
        """The options of sparse, diff (diff pruning) and full with a gradient mask."""
        if self.at != "params":
            bad("element-wise sparse terms modify the weights; use at=params")
        file_mask = self.form == "sparse" and self.mask == "file"
        if not (0.0 < self.density <= 1.0) and not (file_mask and self.density == 0.0):
            bad(f"density={self.density} must be in (0, 1], a fraction of the weights "
                "(0.005 = 0.5%)")
        masks = {"sparse": SPARSE_MASKS, "full": CHILD_MASKS, "diff": ("",)}.get(self.form)
        if masks is None:
            bad(f"mask= is an option of sparse and full terms, not {self.form}")
        if self.mask not in masks:
            bad(f"unknown mask criterion {self.mask!r}; use {', '.join(masks)}")
        if file_mask and not self.path:
            bad("mask=file needs path=MASK.safetensors (made by `unified-petl mask`)")
        if self.path and not file_mask:
            bad("path= names the mask file of mask=file")
        if self.select not in SELECTS:
            bad(f"unknown select {self.select!r}; use global or per_leaf")
        if self.mask == "fisher" and self.num_examples < 1:
            bad(f"num_examples={self.num_examples} must be >= 1 (Fisher examples)")
        if any(k < 0 for _, k in self.counts):
            bad("counts must be >= 0")
        if self.form == "diff":
            if len(self.gate) != 5:
                bad("diff pruning needs gate=(lower, upper, beta, log_alpha_init, structured)")
            lower, upper, beta = self.gate[:3]
            if not (lower < 0.0 and upper > 1.0 and beta > 0.0):
                bad(f"hard-concrete stretch ({lower}, {upper}) must have lower < 0 < 1 < upper "
                    f"and beta={beta} > 0")
            if self.steps < 0 or self.gate_lr <= 0.0 or self.l0 < 0.0 or self.lr < 0.0:
                bad("diff pruning needs steps >= 1 (stage 1), alpha_lr > 0, l0 >= 0, lr >= 0")

    def short(self) -> str:
        fields = dataclasses.asdict(self)
        default = dataclasses.asdict(Term(form=self.form, at=self.at))
        parts = [f"{k}={v}" for k, v in fields.items()
                 if k not in ("form", "counts") and v != default[k]]
        if self.counts:
            parts.append(f"counts=<{len(self.counts)} leaves>")
        return f"{self.form}({', '.join(['at=' + self.at] + parts)})"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["counts"] = [[p, int(k)] for p, k in self.counts]
        d["gate"] = list(self.gate)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Term":
        d = dict(d)
        d["targets"] = tuple(d.get("targets", ()))
        d["counts"] = tuple((str(p), int(k)) for p, k in d.get("counts", ()))
        d["gate"] = tuple(float(g) for g in d.get("gate", ()))
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Method:
    """A Δh method: a tuple of terms plus whether a new task head is trained.

    name: the preset string it came from (for logs and checkpoints).
    train_head: a newly initialised task head (classification) is trained (it lives in
      `delta` and is counted separately). The reference code froze it; default True.
    """

    terms: tuple[Term, ...] = ()
    name: str = "none"
    train_head: bool = True

    # --- queries used by the model modules -------------------------------------------------
    def of(self, form: str, at: Optional[str] = None) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.form == form and (at is None or t.at == at))

    @property
    def full(self) -> bool:
        return bool(self.of("full"))

    @property
    def prefix(self) -> Optional[Term]:
        found = self.of("prefix")
        return found[0] if found else None

    @property
    def prompt(self) -> Optional[Term]:
        found = self.of("prompt")
        return found[0] if found else None

    def lora_for(self, target: str) -> Optional[Term]:
        for t in self.of("lora"):
            if target in t.targets:
                return t
        return None

    def adapters(self, at: str, insertion: Optional[str] = None) -> tuple[Term, ...]:
        return tuple(t for t in self.of("adapter", at)
                     if insertion is None or t.insertion == insertion)

    @property
    def masked_patterns(self) -> tuple[str, ...]:
        return tuple(t.pattern for t in self.of("masked"))

    @property
    def sparse(self) -> Optional[Term]:
        """The element-wise sparse term (sparse(...)), if any."""
        found = self.of("sparse")
        return found[0] if found else None

    @property
    def diff(self) -> Optional[Term]:
        """Diff pruning's gated term (stage 1), if any."""
        found = self.of("diff")
        return found[0] if found else None

    @property
    def grad_mask(self) -> Optional[Term]:
        """The `full` term of Child-Tuning (a gradient mask inside the optimiser), if any."""
        found = tuple(t for t in self.of("full") if t.mask)
        return found[0] if found else None

    def validate(self, *, encoder_only: bool = False) -> "Method":
        for t in self.terms:
            t.validate()
        for form in ("prefix", "prompt", "full", "sparse", "diff"):
            if len(self.of(form)) > 1:
                raise SpecError(f"method {self.name!r} has more than one {form} term; merge them")
        for target in LORA_TARGETS:
            if sum(target in t.targets for t in self.of("lora")) > 1:
                raise SpecError(f"method {self.name!r} puts two LoRA terms on {target}")
        for at, ins in (("heads", "parallel"), ("attn", "parallel"), ("attn", "sequential"),
                        ("ffn", "parallel"), ("ffn", "sequential")):
            if len(self.adapters(at, ins)) > 1:
                raise SpecError(f"method {self.name!r} has two {ins} adapters at {at}; "
                                "use one with a larger r")
        if encoder_only and self.prompt is not None:
            raise SpecError("prompt tuning is implemented for the (m)BART encoder only; "
                            "on an encoder-only model use prefix(l=...) instead")
        if self.full and len(self.terms) > 1:
            raise SpecError("full fine-tuning trains every weight; combine no other term with it")
        if self.diff is not None and len(self.terms) > 1:
            raise SpecError("diff pruning is a whole method (a gated stage, then a sparse one); "
                            "combine no other term with it")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "train_head": self.train_head,
                "terms": [t.to_dict() for t in self.terms]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Method":
        return cls(terms=tuple(Term.from_dict(t) for t in d["terms"]), name=d["name"],
                   train_head=d.get("train_head", True))

    def same_as(self, stored: dict[str, Any]) -> bool:
        """Whether a stored spec (to_dict, e.g. a checkpoint's) is this method. Compared as
        Methods: a spec written before a Term field existed has that field's default."""
        return Method.from_dict(stored) == self


# ---------------------------------------------------------------------------------------------
# Presets: the paper's methods with its defaults. Each returns a tuple of terms.

def _lora_targets(at: str) -> tuple[str, ...]:
    if at in ("attn", "qv"):
        return ("q", "v")
    if at == "ffn":
        return ("fc1", "fc2")
    if at in ("all", "attn+ffn"):
        return ("q", "v", "fc1", "fc2")
    targets = tuple(t for t in re.split(r"[+|/]", at) if t)
    return targets


def _adapter(at, insertion, r, *, s=1.0, init="bert", ln="none", dropout=0.0, learn_s=False):
    return Term(form="adapter", at=at, insertion=insertion,
                composition="scaled" if (s != 1.0 or learn_s) else "add", size=r, scale=float(s),
                learn_scale=learn_s, init=init, layernorm=ln, dropout=dropout)


def _prefix(l, *, mlp=True, gate="concat", hidden=800):
    # "concat" is the paper's prefix tuning; it *is* the gated form (eq. 5-7), computed by
    # concatenating P_k, P_v to K, V. "gated" computes the same thing explicitly; "add" is the
    # ungated ablation (prefix term added without λ).
    if gate not in ("concat", "gated", "add"):
        raise SpecError(f"prefix gate={gate!r}: use concat, gated or add")
    comp = "gated" if gate in ("concat", "gated") else "add"
    return Term(form="prefix", at="heads", insertion="parallel", composition=comp, size=int(l),
                mlp=bool(mlp), mlp_hidden=int(hidden), explicit_gate=gate == "gated")


def preset_terms(name: str, kw: dict[str, Any]) -> tuple[Term, ...]:
    """The terms of one named preset with keyword overrides (paper defaults otherwise)."""
    kw = dict(kw)

    def take(key, default):
        return kw.pop(key, default)

    if name == "none":
        terms = ()
    elif name == "full":
        terms = (Term(form="full", at="params"),)
    elif name == "bitfit":
        terms = (Term(form="masked", at="params", pattern=r".*bias"),)
    elif name == "masked":
        pattern = take("pattern", None)
        if pattern is None:
            raise SpecError("masked needs pattern=REGEX, e.g. masked(pattern='.*bias')")
        terms = (Term(form="masked", at="params", pattern=str(pattern)),)
    elif name == "prompt":
        terms = (Term(form="prompt", at="embed", size=int(take("l", 200)), init="bert"),)
    elif name in ("prefix", "prefix_gated", "prefix_nogate"):
        gate = {"prefix": "concat", "prefix_gated": "gated", "prefix_nogate": "add"}[name]
        terms = (_prefix(take("l", 200), mlp=take("mlp", True), gate=take("gate", gate),
                         hidden=take("hidden", 800)),)
    elif name == "lora":
        r = int(take("r", 16))
        alpha = float(take("alpha", 2 * r))
        at = str(take("at", "attn"))
        terms = (Term(form="lora", at="ffn" if at == "ffn" else "attn", insertion="parallel",
                      composition="scaled", size=r, scale=alpha / r if r > 0 else 1.0,
                      init="lora", dropout=float(take("dropout", 0.0)),
                      targets=_lora_targets(at)),)
    elif name == "houlsby":
        r, init = int(take("r", 200)), take("init", "bert")
        terms = (_adapter("attn", "sequential", r, init=init),
                 _adapter("ffn", "sequential", r, init=init))
    elif name == "pfeiffer":
        terms = (_adapter("ffn", "sequential", int(take("r", 600)), init=take("init", "bert")),)
    elif name in ("pa", "sa"):
        insertion = "parallel" if name == "pa" else "sequential"
        terms = (_adapter(str(take("at", "ffn")), insertion, int(take("r", 512)),
                          s=float(take("s", 1.0)), init=take("init", "bert"),
                          ln=take("ln", "none"), learn_s=bool(take("learn_s", False))),)
    elif name == "scaled_pa":
        terms = (_adapter(str(take("at", "ffn")), "parallel", int(take("r", 512)),
                          s=float(take("s", 4.0)), init=take("init", "lora"),
                          learn_s=bool(take("learn_s", False))),)
    elif name == "mh_pa":
        terms = (_adapter("heads", "parallel", int(take("r", 30)), init=take("init", "bert")),)
    elif name in ("sparse", "fish"):
        mask = str(take("mask", "fisher" if name == "fish" else "random"))
        if name == "fish" and mask != "fisher":
            raise SpecError("fish is sparse(mask=fisher); use sparse(mask=...) for another mask")
        # mask=file: the density is the file's unless given (then it must agree)
        density = float(take("density", 0.0 if mask == "file" else 0.005))
        terms = (Term(form="sparse", at="params", density=density, mask=mask,
                      path=str(take("path", "")), pattern=str(take("pattern", "")),
                      select=str(take("select", "global")),
                      head_in_budget=bool(take("head_in_budget", True)),
                      num_examples=int(take("num_examples", 1024))),)
    elif name == "child_tuning":
        mode = str(take("mode", "F")).upper()
        if mode not in ("D", "F"):
            raise SpecError(f"child_tuning mode={mode!r}: use D (fixed Fisher mask) or F "
                            "(a fresh Bernoulli mask every step)")
        # D masks the encoder/decoder layers only, as the authors' calculate_fisher ('layer'
        # in the parameter name); F masks every trained weight (ChildTuningOptimizer.py).
        pattern = str(take("pattern", r".*layers?_\d+/.*" if mode == "D" else ""))
        terms = (Term(form="full", at="params", mask="fisher" if mode == "D" else "bernoulli",
                      density=float(take("p", 0.3)), pattern=pattern,
                      num_examples=int(take("num_examples", 1024)) if mode == "D" else 0),)
    elif name in ("diff_pruning", "diff_gates"):
        # diff_pruning: both stages (unified_petl.train.diff_pruning); diff_gates: the gated
        # stage alone, an ordinary one-stage method (what stage 1 trains).
        steps = take("steps", None if name == "diff_pruning" else 0)
        if steps is None:
            raise SpecError("diff_pruning needs steps=N: the stage-1 (gated) steps; the rest "
                            "of total_steps trains the fixed sparse mask")
        gate = (float(take("lower", -1.5)), float(take("upper", 1.5)), float(take("beta", 1.0)),
                float(take("alpha_init", 5.0)), float(bool(take("structured", False))))
        terms = (Term(form="diff", at="params", density=float(take("density", 0.005)),
                      pattern=str(take("pattern", "")), gate=gate,
                      head_in_budget=bool(take("head_in_budget", True)),
                      gate_lr=float(take("alpha_lr", 0.1)), l0=float(take("l0", 1.25e-7)),
                      steps=int(steps), lr=float(take("lr", 0.0))),)
    elif name == "mam":
        terms = (_prefix(take("l", 30), mlp=take("mlp", True), hidden=take("hidden", 800)),
                 _adapter("ffn", "parallel", int(take("r", 512)), s=float(take("s", 4.0)),
                          init="lora"))
    else:
        raise SpecError(f"unknown method {name!r}; use one of {', '.join(PRESETS)} "
                        "(combine with '+', e.g. 'prefix(l=30)+pa(r=512)')")
    if kw:
        raise SpecError(f"{name}() got unknown argument(s) {sorted(kw)}")
    return terms


PRESETS = ("none", "full", "bitfit", "masked", "prompt", "prefix", "prefix_gated",
           "prefix_nogate", "lora", "houlsby", "pfeiffer", "pa", "sa", "scaled_pa", "mh_pa",
           "mam", "sparse", "fish", "child_tuning", "diff_pruning", "diff_gates")

_CALL = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$", re.S)


def _value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_method(text: "str | Method", *, train_head: bool = True) -> Method:
    """'mam(l=30, r=512)' or 'prefix(l=30)+pa(r=512)' -> validated Method."""
    if isinstance(text, Method):
        return text.validate()
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"method must be a preset string like 'lora(r=8)', got {text!r}")
    terms: list[Term] = []
    for piece in _split_top(text, "+"):
        m = _CALL.match(piece)
        if not m:
            raise SpecError(f"cannot parse method {piece.strip()!r}; write name(key=value, ...)")
        name, args = m.group(1), m.group(2) or ""
        kw = {}
        for arg in filter(str.strip, _split_top(args, ",")):
            if "=" not in arg:
                raise SpecError(f"argument {arg.strip()!r} of {name}() must be key=value")
            k, v = arg.split("=", 1)
            kw[k.strip()] = _value(v)
        if "head" in kw:
            train_head = bool(kw.pop("head"))
        terms.extend(preset_terms(name, kw))
    return Method(terms=tuple(terms), name=re.sub(r"\s+", "", text), train_head=train_head).validate()
