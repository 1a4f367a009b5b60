"""Where each array of a run lives: the mesh axes, the FSDP rule, per-device bytes.

The mesh has two axes, `data` x `fsdp` (train.step.make_mesh). A batch is split over both
(BATCH_AXES), so every device gets its own rows whatever the split. Weights follow one rule
by shape (`fsdp_spec`): a leaf with at least `min_size` elements is split over `fsdp` on its
largest dimension that the axis size divides; smaller leaves (biases, LayerNorm, gates) and
leaves with no such dimension stay whole on every device. With fsdp = 1 every leaf is
replicated: plain data parallelism.

The rule is applied to every tree the step takes: the frozen weights, the trainable tree and
the optimiser state. The AdamW moments have their parameter's shape, so each moment is split
like its parameter. Δh of a PETL method follows the same rule: most of its leaves are below
`min_size` and stay replicated; the large ones (the prefix MLP of prefix / MAM, 24M values on
bart-large) are split too. Nothing here gathers by hand: the step is one `jax.jit` whose
in/out shardings carry these NamedShardings, and XLA's SPMD partitioner inserts the
all-gather of each weight where a layer needs it (and the reduce-scatter of its gradient).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Leaves with fewer elements stay replicated: splitting a 1024-vector over 8 devices saves
# 3.5 KiB and costs a collective per use. 2**16 fp32 values = 256 KiB.
MIN_SIZE = 2 ** 16


def fsdp_size(mesh: Mesh) -> int:
    return int(dict(mesh.shape).get("fsdp", 1))


def fsdp_spec(shape: tuple[int, ...], size: int, min_size: int = MIN_SIZE) -> P:
    """PartitionSpec of a leaf of `shape` on an fsdp axis of `size` devices.

    The largest dimension divisible by `size` (the first of equals) is split; P() (replicated)
    when size is 1, the leaf has fewer than `min_size` elements, or no dimension divides.
    """
    if size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(dim, i) for i, dim in enumerate(shape) if dim % size == 0 and dim >= size]
    if not candidates:
        return P()
    _, axis = max(candidates, key=lambda c: (c[0], -c[1]))
    return P(*([None] * axis + ["fsdp"]))


def tree_shardings(tree: Any, mesh: Mesh, min_size: int = MIN_SIZE) -> Any:
    """NamedSharding of every leaf of `tree` (arrays or ShapeDtypeStructs) by `fsdp_spec`."""
    size = fsdp_size(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), size, min_size)),
                        tree)


def shardings_of(tree: Any) -> Any:
    """The shardings of placed arrays (or ShapeDtypeStructs that carry one)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def place(tree: Any, shardings: Any) -> Any:
    """Copies of `tree` laid out by `shardings` (a tree of shardings, or one for all leaves).

    Never aliases the input: the train step donates the state, which must not delete the
    caller's arrays (base.params for full fine-tuning)."""
    if not isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x, s: jax.device_put(jnp.array(x, copy=True), s),
                            tree, shardings)
    return jax.tree.map(lambda x: jax.device_put(jnp.array(x, copy=True), shardings), tree)


def cast_floating(tree: Any, dtype) -> Any:
    """Every floating leaf of `tree` as `dtype` (ints and bools unchanged); arrays or
    ShapeDtypeStructs."""
    def cast(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(cast, tree)


def device_bytes(tree: Any, shardings: Optional[Any] = None) -> int:
    """Bytes of `tree` held on one device (the most loaded one; every device holds the same
    amount under these rules). Leaves are arrays or ShapeDtypeStructs; `shardings` defaults
    to the leaves' own."""
    leaves = jax.tree.leaves(tree)
    shards = (jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
              if shardings is not None else [x.sharding for x in leaves])
    total = 0
    for x, s in zip(leaves, shards):
        shape = s.shard_shape(tuple(x.shape)) if s is not None else tuple(x.shape)
        total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
    return total


def host_array(x: jax.Array) -> np.ndarray:
    """A (possibly sharded) array as one numpy array, assembled from this process's shards
    only: no collective, so process 0 alone may call it (the trainer writes Δh files on
    process 0). Needs every element on this host; make_mesh keeps each fsdp group within one
    host, so every host holds a whole copy."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    out = np.empty(x.shape, x.dtype)
    seen = np.zeros(x.shape, bool)
    for shard in x.addressable_shards:
        out[shard.index] = np.asarray(shard.data)
        seen[shard.index] = True
    if not seen.all():
        raise ValueError(f"an array of shape {x.shape} is split across hosts ({x.sharding}); "
                         "use a mesh.fsdp that divides the devices of one host")
    return out


def host_tree(tree: Any) -> Any:
    """`host_array` of every leaf."""
    return jax.tree.map(host_array, tree)
