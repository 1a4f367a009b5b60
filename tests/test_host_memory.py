"""unified_petl.host_memory: freed step buffers are reused instead of page-faulted anew.

The check counts the minor page faults of an SGD step on a 64 MB embedding table (the
dense word-embedding gradient of full fine-tuning) in a fresh process: with glibc's
defaults every step faults the whole 64 MB temporary in again (16,384 pages of 4 KB);
with keep_freed_memory() it reuses the memory the previous step freed.
"""
import os
import statistics
import subprocess
import sys
import textwrap

import pytest

from unified_petl import host_memory

PROBE = textwrap.dedent("""
    import resource, sys
    from functools import partial
    if sys.argv[1] == "keep":
        from unified_petl.host_memory import keep_freed_memory
        assert keep_freed_memory()
    import jax, jax.numpy as jnp

    @partial(jax.jit, donate_argnums=0)
    def sgd_step(table, ids):
        grad = jax.grad(lambda t: jnp.take(t, ids, axis=0).sum())(table)  # dense [V, D]
        return table - 0.1 * grad

    table, ids = jnp.ones((16384, 1024)), jnp.arange(256)
    for _ in range(8):  # the heap settles: blocks of every size the step frees exist
        table = sgd_step(table, ids).block_until_ready()
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        table = sgd_step(table, ids).block_until_ready()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES_OF_THE_GRADIENT = 16384 * 1024 * 4 // 4096


def faults_per_step(mode: str) -> float:
    """The median of 9 steps' minor page faults, after 8 steps (glibc's heap may take a
    few more steps to hold a free block of every size the step asks for)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(host_memory.ENV, None)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return statistics.median(float(n) for n in out.stdout.split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_step_buffers_are_reused_not_faulted_in_again():
    assert faults_per_step("default") >= 0.9 * PAGES_OF_THE_GRADIENT  # the problem is real
    assert faults_per_step("keep") < 0.05 * PAGES_OF_THE_GRADIENT


def test_turned_off_by_the_environment_variable():
    for value in ("0", "off", "false", "no"):
        assert host_memory.keep_freed_memory({host_memory.ENV: value}) is False


def test_an_unknown_value_is_one_warning_line_and_off(capsys):
    assert host_memory.keep_freed_memory({host_memory.ENV: "maybe"}) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "UNIFIED_PETL_KEEP_FREED_MEMORY='maybe'" in err[0], err
