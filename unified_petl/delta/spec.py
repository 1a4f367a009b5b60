"""The Δh design space: one term per point of the paper's four axes, methods as tuples of terms.

A *term* is one Δh: its functional form (prefix attention, bottleneck adapter, LoRA and its
DoRA / rsLoRA variants, IA3 vectors, plus the degenerate forms prompt / masked offsets / full),
the representation it modifies (attention heads, attention sub-layer, FFN sub-layer), the
insertion form (sequential / parallel), the composition (add / scaled / gated / multiply, and a
learned input-dependent gate on any additive term, UniPELT's), its size (l or r) and a few
options. A *method* is a tuple of terms.

Presets are strings shared by configs and the CLI::

    parse_method("mam(l=30, r=512, s=4)")
    parse_method("prefix(l=30) + pa(r=512, at=ffn)")   # any sum of presets

Every option is read by a typed reader (`unified_petl.delta.options`) and `Method.validate`
refuses combinations that make no sense, each with one clear line. Options a preset leaves to
the base model (None: the adapters' dropout, the multi-head adapter's LayerNorm and scale) are
set by `Method.resolve(cfg)` when the model is built, so a built model's method holds numbers.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional

from unified_petl.delta.options import Options, SpecError, parse_call, split_top

FORMS = ("prefix", "adapter", "lora", "ia3", "prompt", "masked", "full", "sparse", "diff")
AT = ("heads", "attn", "ffn", "embed", "params")
INSERTIONS = ("parallel", "sequential")
COMPOSITIONS = ("add", "scaled", "gated", "multiply")
INITS = ("bert", "lora", "ones")
GATED_FORMS = ("prefix", "adapter", "lora")  # the additive terms a learned gate can scale
LAYERNORMS = ("none", "in", "out")
LORA_TARGETS = ("q", "k", "v", "o", "fc1", "fc2")
SPARSE_MASKS = ("random", "magnitude", "fisher", "file")  # how a sparse term picks its weights
CHILD_MASKS = ("fisher", "bernoulli")  # Child-Tuning_D / _F gradient masks of `full`
SELECTS = ("global", "per_leaf")


@dataclasses.dataclass(frozen=True)
class Term:
    """One Δh term.

    form: prefix | adapter | lora | ia3 | prompt | masked | full.
    at: modified representation: heads (prefix, multi-head PA), attn (attention sub-layer),
      ffn (FFN sub-layer), embed (prompt), params (masked / full). LoRA and IA3: attn unless
      every target is fc1 / fc2 (then ffn); `targets` says exactly which projections.
    insertion: parallel (Δh from the sub-layer input x) or sequential (from h itself; IA3).
    composition: add (h + Δh), scaled (h + s·Δh), gated ((1-λ)h + λΔh, prefix softmax mass),
      multiply (h <- l ⊙ h, IA3: `unified_petl.delta.ia3`).
    size: l for prefix / prompt, r for adapter / LoRA; 0 for IA3 (one vector per target).
    scale: s of the scaled composition (LoRA: alpha / r, rsLoRA: alpha / sqrt(r)); learn_scale
      makes s a variable (init s). None (multi-head adapter): the base's, set by `resolve`.
      IA3: 1.0 (its vectors are the scale).
    init: bert (N(0, 0.02), bias 0), lora (down kaiming-uniform, up 0: starts as the base) or
      ones (IA3 vectors, PEFT's init_ia3_weights=True: starts as the base).
    layernorm: adapter layernorm in (on the adapter input) / out (on s·W_up(...)) / none;
      None: the base's, set by `resolve`.
    dropout: dropout inside the Δh module (adapter hidden activation, LoRA input, prefix none);
      None: the base's, set by `resolve` (adapters: the model's dropout at the FFN, the
      attention dropout at attn / heads, as the reference's Adapter_Layer).
    mlp: prefix MLP reparameterisation (training only; `eject` turns it into plain prefixes).
    mlp_hidden: width of that MLP (800 in the paper).
    targets: LoRA / IA3 projections (q, k, v, o, fc1, fc2; module names in
      `unified_petl.models.layers.PROJECTION_NAMES`).
    pattern: masked: regex over '/'-joined parameter paths (e.g. '.*bias').
    explicit_gate: prefix: compute (1-λ)·Attn + λ·softmax(q P_k^T) P_v term by term instead of
      concatenating P_k, P_v to K, V (the same function, paper eq. 5-7; exposes λ).
    learn_gate: UniPELT's learned gate G = σ(W_g z + b_g) [..., 1] from the input z the term
      reads (`unified_petl.delta.gates`): LoRA Δh <- G·Δh, adapter Δh <- G·Δh, prefix
      P_k, P_v <- G·P_k, G·P_v (per query position). Additive forms only (GATED_FORMS).
    rslora: LoRA scaled by alpha / sqrt(r) (Kalajdzievski 2023; PEFT use_rslora=True); `scale`
      holds that number, so alpha = scale·sqrt(r) (and scale·r without rslora).
    dora: LoRA as DoRA (Liu et al. 2024; PEFT use_dora=True): W' = m ⊙ (W + s·BA) /
      ||W + s·BA||, norm over the input dimension per output unit (`unified_petl.delta.dora`).
    input_targets: IA3: the targets whose INPUT the vector scales (PEFT's feedforward_modules,
      e.g. fc2: the FFN's intermediate activation); the other targets' OUTPUT is scaled.

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
    scale: Optional[float] = 1.0
    learn_scale: bool = False
    init: str = "bert"
    layernorm: Optional[str] = "none"
    dropout: Optional[float] = 0.0
    mlp: bool = False
    mlp_hidden: int = 800
    targets: tuple[str, ...] = ()
    pattern: str = ""
    explicit_gate: bool = False
    learn_gate: bool = False
    rslora: bool = False
    dora: bool = False
    input_targets: tuple[str, ...] = ()
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
            bad(f"unknown composition {self.composition!r}; use add, scaled, gated or multiply")
        if self.init not in INITS:
            bad(f"unknown init {self.init!r}; use bert or lora (ones: IA3)")
        if self.layernorm is not None and self.layernorm not in LAYERNORMS:
            bad(f"unknown layernorm {self.layernorm!r}; use in, out or none")
        if self.dropout is not None and not (_is_number(self.dropout)
                                             and 0.0 <= self.dropout < 1.0):
            bad(f"dropout={self.dropout} must be a number in [0, 1)")
        if self.scale is not None and not (_is_number(self.scale) and math.isfinite(self.scale)
                                           and self.scale > 0):
            bad(f"scale s={self.scale} must be a finite number > 0")
        if self.form in ("prefix", "adapter", "lora", "prompt") and not (
                _is_int(self.size) and self.size > 0):
            what = "l (prefix length)" if self.form in ("prefix", "prompt") else "r (bottleneck)"
            bad(f"{what} must be an integer > 0, got {self.size}")
        if self.mlp and not _is_int(self.mlp_hidden):
            bad(f"mlp_hidden must be an integer, got {self.mlp_hidden}")
        if self.mlp and (self.form != "prefix" or self.mlp_hidden <= 0):
            bad("mlp reparameterisation needs a prefix term and mlp_hidden > 0")
        if self.explicit_gate and (self.form != "prefix" or self.composition != "gated"):
            bad("explicit_gate is an option of the gated prefix only")
        if self.composition == "gated" and self.form != "prefix":
            bad("gated composition needs a prefix softmax (λ is the prefix attention mass); "
                "use add or scaled for adapters and LoRA, or learn_gate=true for a learned gate")
        if (self.composition == "multiply") != (self.form == "ia3"):
            bad("the multiplicative composition h <- l ⊙ h is IA3's and IA3 composes only by it; "
                "use add or scaled for the additive forms")
        if (self.init == "ones") != (self.form == "ia3"):
            bad("init=ones is the IA3 vectors' init (and IA3's only one); adapters and LoRA use "
                "bert or lora")
        if self.learn_gate and self.form not in GATED_FORMS:
            bad(f"a learned gate σ(W_g x) scales an additive Δh (lora, adapter, prefix); "
                f"{self.form} has none to scale")
        if (self.rslora or self.dora) and self.form != "lora":
            bad("rslora and dora are options of a LoRA term")
        if self.dora and self.learn_gate:
            bad("DoRA rescales the whole weight (magnitude x direction), not an additive Δh; "
                "learn_gate needs plain LoRA")
        if self.input_targets and self.form != "ia3":
            bad("input_targets (the projections whose input is scaled) is an option of IA3")
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
            if self.at == "heads" and self.layernorm == "out":
                bad("the multi-head adapter's layernorm is on its input: use ln=in or ln=none")
        if self.form == "lora":
            if not self.targets:
                bad("LoRA needs targets (q, k, v, o, fc1, fc2)")
            unknown = [t for t in self.targets if t not in LORA_TARGETS]
            if unknown:
                bad(f"unknown LoRA targets {unknown}; use {', '.join(LORA_TARGETS)}")
            if self.insertion != "parallel":
                bad("LoRA is parallel to the frozen projection by construction")
        if self.form == "ia3":
            self._validate_ia3(bad)
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
        if not (_is_number(self.density) and 0.0 < self.density <= 1.0) and not (
                file_mask and self.density == 0.0):
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
        if self.mask == "fisher" and not (_is_int(self.num_examples) and self.num_examples >= 1):
            bad(f"num_examples={self.num_examples} must be an integer >= 1 (Fisher examples)")
        if any(not _is_int(k) or k < 0 for _, k in self.counts):
            bad("counts must be integers >= 0")
        if self.form == "diff":
            if len(self.gate) != 5:
                bad("diff pruning needs gate=(lower, upper, beta, log_alpha_init, structured)")
            lower, upper, beta = self.gate[:3]
            if not (lower < 0.0 and upper > 1.0 and beta > 0.0):
                bad(f"hard-concrete stretch ({lower}, {upper}) must have lower < 0 < 1 < upper "
                    f"and beta={beta} > 0")
            if self.steps < 0 or self.gate_lr <= 0.0 or self.l0 < 0.0 or self.lr < 0.0:
                bad("diff pruning needs steps >= 1 (stage 1), alpha_lr > 0, l0 >= 0, lr >= 0")

    def _validate_ia3(self, bad) -> None:
        if self.scale != 1.0 or self.learn_scale:
            bad("IA3 has no scale s: its learned vectors are the scale")
        if self.size != 0:
            bad("IA3 has no size r or l: it learns one vector per target projection")
        if not self.targets:
            bad("IA3 needs targets (q, k, v, o, fc1, fc2)")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            bad(f"unknown IA3 targets {unknown}; use {', '.join(LORA_TARGETS)}")
        stray = [t for t in self.input_targets if t not in self.targets]
        if stray:
            bad(f"IA3 inputs {stray} are not among its targets {list(self.targets)}")
        if self.insertion != "sequential":
            bad("IA3 rescales the representation itself: insertion=sequential")
        if self.dropout != 0.0 or self.layernorm != "none":
            bad("IA3 has no dropout and no layernorm")
        if self.at not in ("attn", "ffn"):
            bad("IA3 rescales projections of the attention (attn) or the FFN (ffn)")

    def resolve(self, cfg) -> "Term":
        """This term with the options left to the base (None) set from its ArchConfig `cfg`.

        The reference (jxhe/unify-parameter-efficient-tuning) builds every Adapter_Layer with
        dropout = the model's dropout at the FFN and the attention dropout at the attention
        (modeling_bart.py BartAttention / BartEncoderLayer; modeling_roberta.py: attention_
        probs_dropout_prob, hidden_dropout_prob); its multi-head adapter ('cross_attn_relu')
        on BART reads q = W_q LN(x) + b_q with a trainable LayerNorm and no 1/sqrt(d_h), and
        on RoBERTa reads the attention's own query with no LayerNorm and divides q P_k^T by
        sqrt(d_h), which equals s = d_h^-1/2 on the output (ReLU is positively homogeneous).
        """
        changes: dict[str, Any] = {}
        if self.dropout is None:
            base = cfg.dropout if self.at == "ffn" else cfg.attention_dropout
            changes["dropout"] = float(base) if self.form == "adapter" else 0.0
        if self.layernorm is None:
            heads_ln = "in" if cfg.seq2seq else "none"
            changes["layernorm"] = {"heads": heads_ln, "attn": "in"}.get(self.at, "none")
        if self.scale is None:
            on_heads = self.at == "heads" and not cfg.seq2seq
            scale = (cfg.d_model // cfg.heads) ** -0.5 if on_heads else 1.0
            changes["scale"] = float(scale)
            if scale != 1.0 and self.composition == "add":
                changes["composition"] = "scaled"
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def resolved(self) -> bool:
        return None not in (self.dropout, self.layernorm, self.scale)

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
        d["input_targets"] = list(self.input_targets)
        d["counts"] = [[p, int(k)] for p, k in self.counts]
        d["gate"] = list(self.gate)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Term":
        """A term from `to_dict` (fields added later take their defaults: old specs load)."""
        d = dict(d)
        d["targets"] = tuple(d.get("targets", ()))
        d["input_targets"] = tuple(d.get("input_targets", ()))
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
        """The LoRA term (plain, rsLoRA or DoRA) on projection `target`, if any."""
        for t in self.of("lora"):
            if target in t.targets:
                return t
        return None

    def ia3_for(self, target: str) -> Optional[Term]:
        """The IA3 term that rescales projection `target` (its input if `target` is in the
        term's input_targets, else its output), if any."""
        for t in self.of("ia3"):
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

    def resolve(self, cfg) -> "Method":
        """The method with every term's base-dependent option set (`Term.resolve`)."""
        return dataclasses.replace(self, terms=tuple(t.resolve(cfg) for t in self.terms))

    def validate(self, *, encoder_only: bool = False) -> "Method":
        for t in self.terms:
            t.validate()
        for form in ("prefix", "prompt", "full", "sparse", "diff"):
            if len(self.of(form)) > 1:
                raise SpecError(f"method {self.name!r} has more than one {form} term; merge them")
        for target in LORA_TARGETS:
            if sum(target in t.targets for t in self.of("lora")) > 1:
                raise SpecError(f"method {self.name!r} puts two LoRA terms on {target}")
            if sum(target in t.targets for t in self.of("ia3")) > 1:
                raise SpecError(f"method {self.name!r} puts two IA3 terms on {target}")
            if self.lora_for(target) is not None and self.ia3_for(target) is not None:
                raise SpecError(f"method {self.name!r} puts LoRA and IA3 on {target}; use one "
                                "weight term per projection")
        for at, ins in (("heads", "parallel"), ("attn", "parallel"), ("attn", "sequential"),
                        ("ffn", "parallel"), ("ffn", "sequential")):
            if len(self.adapters(at, ins)) > 1:
                raise SpecError(f"method {self.name!r} has two {ins} adapters at {at}; "
                                "use one with a larger r")
        for at in ("attn", "ffn"):  # the model holds one adapter module per sub-layer
            if len(self.adapters(at)) > 1:
                raise SpecError(f"method {self.name!r} has a parallel and a sequential adapter "
                                f"at {at}; use one adapter per sub-layer")
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




def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Presets: the paper's methods with its defaults. Each returns a tuple of terms.

# BitFit trains every bias, not BART's final_logits_bias: a registered buffer in the reference
# (modeling_bart.py, BartForConditionalGeneration.__init__), so never a parameter there.
BITFIT_PATTERN = r"(?!final_logits_bias$).*bias"
ADAPTER_AT = ("attn", "ffn")


def _lora_targets(at: str) -> tuple[str, ...]:
    if at in ("attn", "qv"):
        return ("q", "v")
    if at == "ffn":
        return ("fc1", "fc2")
    if at in ("all", "attn+ffn"):
        return ("q", "v", "fc1", "fc2")
    targets = tuple(t for t in re.split(r"[+|/]", at) if t)
    return targets


def _adapter(at, insertion, r, *, s=1.0, init="bert", ln="none", dropout=None, learn_s=False,
             learn_gate=False):
    composition = "scaled" if learn_s or (s is not None and s != 1.0) else "add"
    return Term(form="adapter", at=at, insertion=insertion, composition=composition, size=r,
                scale=None if s is None else float(s), learn_scale=learn_s, init=init,
                layernorm=ln, dropout=dropout, learn_gate=learn_gate)


def _adapter_options(o: Options, at: str, *, r: int, s: Optional[float] = 1.0,
                     init: str = "bert", ln: Optional[str] = None) -> dict[str, Any]:
    """The options every bottleneck adapter takes; ln=None: the reference's for `at` (a
    LayerNorm on the input of attention adapters, none at the FFN)."""
    default_ln = ln if ln is not None else ("in" if at == "attn" else "none")
    return dict(r=o.positive_int("r", r), init=o.choice("init", init, ("bert", "lora")),
                ln=o.choice("ln", default_ln, LAYERNORMS),
                dropout=o.float("dropout", None, low=0.0, high=1.0, high_open=True),
                s=o.float("s", s, low=0.0, low_open=True))


def _prefix(o: Options, *, l: int, gate: Optional[str], hidden: int = 800,
            learn_gate: Optional[bool] = None) -> Term:
    # "concat" is the paper's prefix tuning; it *is* the gated form (eq. 5-7), computed by
    # concatenating P_k, P_v to K, V. "gated" computes the same thing explicitly; "add" is the
    # ungated ablation (prefix term added without λ). gate=None: the preset fixes it.
    # learn_gate (UniPELT's G_P scaling P_k, P_v) is another axis: None reads the option.
    size, mlp = o.positive_int("l", l), o.bool("mlp", True)
    hidden = o.positive_int("hidden", hidden)
    if gate is None:
        gate = o.choice("gate", "concat", ("concat", "gated", "add"))
    if learn_gate is None:
        learn_gate = o.bool("learn_gate", False)
    comp = "gated" if gate in ("concat", "gated") else "add"
    return Term(form="prefix", at="heads", insertion="parallel", composition=comp, size=size,
                mlp=mlp, mlp_hidden=hidden, explicit_gate=gate == "gated", learn_gate=learn_gate)


def _lora(o: Options, *, r: int = 16, rslora: Optional[bool] = None,
          dora: Optional[bool] = None) -> Term:
    """lora / rslora / dora: options r, alpha (default 2r), at, dropout, learn_gate, and
    rslora= / dora= where the preset leaves them open (None)."""
    r = o.positive_int("r", r)
    alpha = o.float("alpha", 2.0 * r, low=0.0, low_open=True)
    at = o.text("at", "attn")
    dropout = o.float("dropout", 0.0, low=0.0, high=1.0, high_open=True)
    rslora = o.bool("rslora", False) if rslora is None else rslora
    dora = o.bool("dora", False) if dora is None else dora
    # at: "ffn" only for at=ffn, as before the variants existed (a saved spec stays equal)
    return Term(form="lora", at="ffn" if at == "ffn" else "attn", insertion="parallel",
                composition="scaled", size=r, scale=alpha / (math.sqrt(r) if rslora else r),
                init="lora", dropout=dropout, targets=_lora_targets(at), rslora=rslora, dora=dora,
                learn_gate=o.bool("learn_gate", False))


def _projection_at(targets: tuple[str, ...]) -> str:
    return "ffn" if targets and set(targets) <= {"fc1", "fc2"} else "attn"


def _target_list(o: Options, key: str, default: str) -> tuple[str, ...]:
    text = o.text(key, default)
    return () if text in ("", "none") else tuple(t for t in re.split(r"[+|/]", text) if t)


def _ia3(o: Options) -> Term:
    """IA3 (Liu et al. 2022): the paper's points by default, keys, values and the FFN's
    intermediate activation (fc2's input). PEFT's defaults are other targets: BART
    q_proj, v_proj, fc2 -> at=q+v+fc2; RoBERTa key, value, output.dense, whose suffix also
    matches attention.output.dense (both input-scaled) -> at=k+v+o+fc2, inputs=o+fc2."""
    targets = _target_list(o, "at", "k+v+fc2")
    inputs = _target_list(o, "inputs", "fc2" if "fc2" in targets else "none")
    return Term(form="ia3", at=_projection_at(targets), insertion="sequential",
                composition="multiply", size=0, scale=1.0, init="ones", dropout=0.0,
                targets=targets, input_targets=inputs)


def _unipelt(o: Options) -> tuple[Term, ...]:
    """UniPELT (Mao et al., ACL 2022) with the authors' defaults (morningmoni/UniPELT
    run_glue.py: prefix_len=10, mid_dim=512, lora_r=8 on W_q, W_v; adapter_config=pfeiffer,
    reduction factor 16 = bottleneck 48 on BERT-base): gated prefix + gated LoRA + gated
    sequential FFN adapter (ReLU, no LayerNorm, no dropout: transformers/adapters/modeling.py
    Adapter). The LoRA gate takes the place of α/r (lora_layers.py LoRA_Linear.forward sets
    scaling = gate), so its s is 1."""
    prefix = _prefix(o, l=10, gate="concat", hidden=512, learn_gate=True)
    r = o.positive_int("r", 8)
    lora = Term(form="lora", at="attn", insertion="parallel", composition="scaled", size=r,
                scale=1.0, init="lora", dropout=0.0, targets=("q", "v"), learn_gate=True)
    adapter = _adapter("ffn", "sequential", o.positive_int("adapter_r", 48), init="bert",
                       ln="none", dropout=0.0, learn_gate=True)
    return prefix, lora, adapter


def _elementwise(name: str, o: Options) -> Term:
    """sparse / fish (a fixed mask), child_tuning (a gradient mask of full fine-tuning),
    diff_pruning / diff_gates (both stages of diff pruning / the gated stage alone)."""
    fraction = dict(low=0.0, high=1.0, low_open=True)
    if name in ("sparse", "fish"):
        mask = "fisher" if name == "fish" else o.choice("mask", "random", SPARSE_MASKS)
        # mask=file: the density is the file's unless given (then it must agree)
        return Term(form="sparse", at="params",
                    density=o.float("density", 0.0 if mask == "file" else 0.005, **fraction),
                    mask=mask, path=o.text("path", ""), pattern=o.text("pattern", ""),
                    select=o.choice("select", "global", SELECTS),
                    head_in_budget=o.bool("head_in_budget", True),
                    num_examples=o.positive_int("num_examples", 1024))
    if name == "child_tuning":
        mode = o.choice("mode", "F", ("D", "F"))
        # D masks the encoder/decoder layers only, as the authors' calculate_fisher ('layer'
        # in the parameter name); F masks every trained weight (ChildTuningOptimizer.py).
        return Term(form="full", at="params", mask="fisher" if mode == "D" else "bernoulli",
                    density=o.float("p", 0.3, **fraction),
                    pattern=o.text("pattern", r".*layers?_\d+/.*" if mode == "D" else ""),
                    num_examples=o.positive_int("num_examples", 1024) if mode == "D" else 0)
    # diff_pruning: both stages (unified_petl.train.diff_pruning); diff_gates: the gated stage
    # alone, an ordinary one-stage method (what stage 1 trains).
    steps = o.positive_int("steps", None if name == "diff_pruning" else 0)
    if steps is None:
        raise SpecError("diff_pruning needs steps=N: the stage-1 (gated) steps; the rest of "
                        "total_steps trains the fixed sparse mask")
    gate = (o.float("lower", -1.5, high=0.0, high_open=True),
            o.float("upper", 1.5, low=1.0, low_open=True),
            o.float("beta", 1.0, low=0.0, low_open=True), o.float("alpha_init", 5.0),
            float(o.bool("structured", False)))
    return Term(form="diff", at="params", density=o.float("density", 0.005, **fraction),
                pattern=o.text("pattern", ""), gate=gate,
                head_in_budget=o.bool("head_in_budget", True),
                gate_lr=o.float("alpha_lr", 0.1, low=0.0, low_open=True),
                l0=o.float("l0", 1.25e-7, low=0.0), steps=steps,
                lr=o.float("lr", 0.0, low=0.0))


def preset_terms(name: str, o: Options) -> tuple[Term, ...]:
    """The terms of one named preset, reading its options from `o` (paper defaults otherwise).
    Options the preset does not take are left in `o` (`Options.done` refuses them)."""
    if name == "none":
        return ()
    if name == "full":
        return (Term(form="full", at="params"),)
    if name == "bitfit":
        return (Term(form="masked", at="params", pattern=BITFIT_PATTERN),)
    if name == "masked":
        pattern = o.text("pattern", None)
        if pattern is None:
            raise SpecError("masked needs pattern=REGEX, e.g. masked(pattern='.*bias')")
        return (Term(form="masked", at="params", pattern=pattern),)
    if name == "prompt":
        return (Term(form="prompt", at="embed", size=o.positive_int("l", 200), init="bert"),)
    if name in ("prefix", "prefix_gated", "prefix_nogate"):
        return (_prefix(o, l=200, gate={"prefix": None, "prefix_gated": "gated",
                                        "prefix_nogate": "add"}[name]),)
    if name in ("lora", "rslora", "dora"):
        return (_lora(o, rslora=True if name == "rslora" else None,
                      dora=True if name == "dora" else None),)
    if name == "ia3":
        return (_ia3(o),)
    if name == "unipelt":
        return _unipelt(o)
    if name == "houlsby":  # ln=None: the reference's per adapter (attention: in; FFN: none)
        r, init = o.positive_int("r", 200), o.choice("init", "bert", ("bert", "lora"))
        ln = o.choice("ln", None, LAYERNORMS)
        dropout = o.float("dropout", None, low=0.0, high=1.0, high_open=True)
        gate = o.bool("learn_gate", False)
        return (_adapter("attn", "sequential", r, init=init, ln=ln or "in", dropout=dropout,
                         learn_gate=gate),
                _adapter("ffn", "sequential", r, init=init, ln=ln or "none", dropout=dropout,
                         learn_gate=gate))
    if name == "pfeiffer":
        kw = _adapter_options(o, "ffn", r=600)
        return (_adapter("ffn", "sequential", kw.pop("r"), learn_gate=o.bool("learn_gate", False),
                         **kw),)
    if name in ("pa", "sa", "scaled_pa"):
        at = o.choice("at", "ffn", ADAPTER_AT)
        scaled = name == "scaled_pa"
        kw = _adapter_options(o, at, r=512, s=4.0 if scaled else 1.0,
                              init="lora" if scaled else "bert")
        insertion = "sequential" if name == "sa" else "parallel"
        return (_adapter(at, insertion, kw.pop("r"), learn_s=o.bool("learn_s", False),
                         learn_gate=o.bool("learn_gate", False), **kw),)
    if name == "mh_pa":  # ln=None, s=None: the reference's for the base (Term.resolve)
        r, init = o.positive_int("r", 30), o.choice("init", "bert", ("bert", "lora"))
        return (_adapter("heads", "parallel", r, init=init,
                         ln=o.choice("ln", None, ("in", "none")),
                         s=o.float("s", None, low=0.0, low_open=True),
                         dropout=o.float("dropout", None, low=0.0, high=1.0, high_open=True),
                         learn_gate=o.bool("learn_gate", False)),)
    if name in ("sparse", "fish", "child_tuning", "diff_pruning", "diff_gates"):
        return (_elementwise(name, o),)
    if name == "mam":
        prefix = _prefix(o, l=30, gate="concat")
        kw = _adapter_options(o, "ffn", r=512, s=4.0, init="lora")
        return (prefix, _adapter("ffn", "parallel", kw.pop("r"), **kw))
    raise SpecError(f"unknown method {name!r}; use one of {', '.join(PRESETS)} "
                    "(combine with '+', e.g. 'prefix(l=30)+pa(r=512)')")


PRESETS = ("none", "full", "bitfit", "masked", "prompt", "prefix", "prefix_gated",
           "prefix_nogate", "lora", "rslora", "dora", "ia3", "houlsby", "pfeiffer", "pa", "sa",
           "scaled_pa", "mh_pa", "mam", "unipelt", "sparse", "fish", "child_tuning",
           "diff_pruning", "diff_gates")


def parse_method(text: "str | Method", *, train_head: bool = True) -> Method:
    """'mam(l=30, r=512)' or 'prefix(l=30)+pa(r=512)' -> validated Method (options the base
    decides stay None until `Method.resolve`)."""
    if isinstance(text, Method):
        return text.validate()
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"method must be a preset string like 'lora(r=8)', got {text!r}")
    terms: list[Term] = []
    for piece in split_top(text, "+"):
        name, raw = parse_call(piece)
        options = Options(name, raw)
        terms.extend(preset_terms(name, options))
        train_head = options.bool("head", train_head)
        options.done()
    return Method(terms=tuple(terms), name=re.sub(r"\s+", "", text),
                  train_head=train_head).validate()
