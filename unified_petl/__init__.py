"""unified-petl: the unified view of parameter-efficient transfer learning in JAX/Flax.

    import unified_petl as up
    base = up.load_pretrained("path/or/hub-id")
    model = up.build(base.config, "mam(l=30, r=512, s=4)")
    delta = up.init_delta(model, jax.random.key(0), batch)
    out = model.apply({"params": base.params, "delta": delta}, **batch, deterministic=True)
    up.export_delta(model, delta, base, "out/", format="adapters")  # AdapterHub; LoRA: "peft"
    model, delta = up.import_delta("peft-adapter-folder-or-hub-id", base)

Element-wise sparse Δh (a mask of individual weights, unified_petl.masks):
    mask = up.masks.compute(base, "sparse(density=0.005, mask=magnitude)", num_labels=2)
    model = up.build(base.config, mask.attach("sparse(density=0.005, mask=magnitude)"),
                     num_labels=2)
    delta = up.init_delta(model, jax.random.key(0), batch, params=base.params, masks=mask)
    method, params, rest = up.merge_sparse(model.method, base.params, delta)
"""
from unified_petl import masks
from unified_petl.build import build, init_delta, shape_tree
from unified_petl.delta.budget import count, count_for
from unified_petl.delta.merge import merge, merge_lora, unmerge_lora
from unified_petl.delta.prefix import eject
from unified_petl.delta.sparse import merge_sparse
from unified_petl.delta.spec import Method, SpecError, Term, parse_method
from unified_petl.exchange import ExchangeError, export_delta, import_delta
from unified_petl.generate import generate
from unified_petl.models.loading import Base, CheckpointError, load_pretrained
from unified_petl.train.checkpoint import load_delta, save_delta

__all__ = ["build", "init_delta", "shape_tree", "load_pretrained", "Base", "CheckpointError",
           "Method", "Term", "SpecError", "parse_method", "count", "count_for", "merge",
           "merge_lora", "unmerge_lora", "eject", "generate", "save_delta", "load_delta",
           "export_delta", "import_delta", "ExchangeError", "masks", "merge_sparse"]
__version__ = "0.1.0"
