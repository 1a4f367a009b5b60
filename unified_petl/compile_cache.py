"""JAX's persistent compilation cache, on by default for the CLI and the demo.

A training step of MiniLM takes ~15-20 s to compile on one CPU core, a bart-large step
minutes; the same program (same model, method, shapes, XLA flags, jax version) compiles to
the same executable, so a second run reads it from disk instead. JAX keys each entry by a
hash of the program and everything that changes its code, so a stale entry is never used.

    UNIFIED_PETL_COMPILE_CACHE unset, "1" or "on"   ->  $XDG_CACHE_HOME/unified-petl/jax
                                                        (default ~/.cache/unified-petl/jax)
    UNIFIED_PETL_COMPILE_CACHE=/some/folder         ->  that folder
    UNIFIED_PETL_COMPILE_CACHE=0 (or off/false/no)  ->  no persistent cache

`unified-petl --no-compile-cache ...` and `python -m unified_petl.demo --no-compile-cache`
turn it off too. A cache folder JAX was already given (JAX_COMPILATION_CACHE_DIR, or
jax.config in the calling program) is left as it is. The folder is capped at MAX_BYTES
(least recently used entries are removed first). A cache that cannot be created costs one
warning line, never the run.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "UNIFIED_PETL_COMPILE_CACHE"
OFF = ("0", "off", "false", "no")
ON = ("", "1", "on", "true", "yes")
# Programs that compile faster than this are not worth a disk read (JAX's default is 1 s,
# which would skip the demo's evaluation and init programs on a fast machine).
MIN_COMPILE_SECONDS = 0.2
MAX_BYTES = 2 << 30  # LRU eviction past 2 GiB (a MiniLM step is ~0.2 MB, bart-large ~10 MB)


def default_folder() -> str:
    """$XDG_CACHE_HOME/unified-petl/jax, or ~/.cache/unified-petl/jax."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "unified-petl", "jax")


def folder_from_env(environ=os.environ) -> Optional[str]:
    """The cache folder UNIFIED_PETL_COMPILE_CACHE asks for, or None when it is off."""
    value = environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value.lower() in ON:
        return default_folder()
    return os.path.expanduser(value)


def setup(enabled: bool = True) -> Optional[str]:
    """Turn the persistent compilation cache on (call before the first jit compile).

    enabled=False (a --no-compile-cache flag) or UNIFIED_PETL_COMPILE_CACHE=0: nothing is
    changed. Returns the folder in use, or None.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own choice stands
        return jax.config.jax_compilation_cache_dir
    folder = folder_from_env() if enabled else None
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        print(f"warning: compilation cache {folder} cannot be created ({e.strerror or e}); "
              f"compiling without it (set {ENV}=0 to silence, or {ENV}=FOLDER)",
              file=sys.stderr, flush=True)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    # -1: no size floor (JAX otherwise picks one per filesystem, which may skip small entries)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder
