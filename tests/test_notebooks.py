"""The notebooks in notebooks/ run from top to bottom (tiny models: UNIFIED_PETL_NOTEBOOK_FAST=1).

The committed notebooks hold the outputs of a full run (real configs, longer training); here
they are executed on tiny settings in a fresh kernel of this interpreter (ipykernel's native
`python3` kernel), so a notebook that no longer matches the library fails the suite. The
executed copies are not written back.
"""
from __future__ import annotations

import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")


@pytest.mark.parametrize("name", ["budget.ipynb", "inspect_delta.ipynb", "sparse_masks.ipynb"])
def test_notebook_runs(name, monkeypatch):
    path = os.path.join(NOTEBOOKS, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing")
    monkeypatch.setenv("UNIFIED_PETL_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no display in the kernel
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # A fresh kernel does not inherit the suite's 8 simulated devices.
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if "xla_force_host_platform_device_count" not in f)
    monkeypatch.setenv("XLA_FLAGS", flags)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


# A committed output must not show where it ran (a user's folders, this machine's venv) nor
# a library's warning: the outputs are part of the documentation.
MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/tmp/|/private/var/|site-packages|\\\\Users\\\\)")


@pytest.mark.parametrize("name", ["budget.ipynb", "inspect_delta.ipynb", "sparse_masks.ipynb"])
def test_committed_outputs_are_clean(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code), f"{name} is committed without outputs"
    for i, cell in enumerate(code):
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            assert kind != "error", f"{name} code cell {i}: an error output"
            assert out.get("name") != "stderr", f"{name} code cell {i}: {out.get('text')!r}"
            text = out.get("text", "") if kind == "stream" else \
                "".join(out.get("data", {}).get("text/plain", ""))
            found = MACHINE_PATH.search(text)
            assert not found, f"{name} code cell {i} shows a machine path: {found.group(0)!r}"
