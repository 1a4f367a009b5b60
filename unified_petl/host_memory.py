"""Keep freed host memory in the process for reuse (glibc), on by default for the CLI, the
demo and the benchmarks.

XLA's CPU backend allocates a step's temporaries and outputs afresh at every call (the
gradients, the dense word-embedding gradient, the activations) and frees them at its end.
glibc hands large free blocks (over a threshold that grows to 32 MB) and the free tops of
its per-thread arena heaps back to the kernel, so the next step touches new pages and
page-faults its whole working set in again: a MiniLM full fine-tuning step on one core took
49,500 minor faults and 0.14 s of kernel time (a sixth of the step), a LoRA step 28,500 and
0.08 s. With one malloc arena, no mmap
for large blocks and no trimming, the memory freed by one step serves the next:

    MiniLM, batch 32 x 16 tokens, one core   full     LoRA     MAM
    default glibc                            0.80 s   0.46 s   0.45 s
    keep_freed_memory()                      0.70 s   0.39 s   0.42 s   (0 faults per step)

The cost: the process keeps the host memory it has freed until it exits, and its resident
size can settle somewhat above glibc's (for the first few steps the heap grows until it
holds a free block of every size a step asks for); a training process holds its peak
anyway. UNIFIED_PETL_KEEP_FREED_MEMORY=0 leaves glibc's defaults. Elsewhere than glibc
(macOS, musl) nothing is changed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "UNIFIED_PETL_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1),  # one heap: a block freed by any thread serves any other
            (M_MMAP_MAX, 0),  # large blocks come from that heap, not from fresh mappings
            (M_TRIM_THRESHOLD, 2 ** 31 - 1))  # and are never handed back while it runs


def keep_freed_memory(environ=os.environ) -> bool:
    """Set SETTINGS with glibc's mallopt; True if they took effect.

    Call it first thing in a program, before JAX starts its threads (a thread keeps the
    arena it first allocated from). Off with UNIFIED_PETL_KEEP_FREED_MEMORY=0 (off, false,
    no); another value than those or 1 (on, true, yes) is one warning line and off.
    """
    from unified_petl.compile_cache import OFF, ON  # the same words for both switches

    value = environ.get(ENV, "").strip().lower()
    if value in OFF:
        return False
    if value not in ON:
        print(f"warning: {ENV}={environ[ENV]!r} is neither on ({', '.join(ON[1:])}) nor off "
              f"({', '.join(OFF)}); keeping glibc's defaults (set {ENV}=0 or 1)",
              file=sys.stderr, flush=True)
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
