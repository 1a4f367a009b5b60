"""The notebooks in notebooks/ run from top to bottom (tiny models: UNIFIED_PETL_NOTEBOOK_FAST=1).

The committed notebooks hold the outputs of a full run (real configs, longer training); here
they are executed on tiny settings in a fresh kernel of this interpreter (ipykernel's native
`python3` kernel), so a notebook that no longer matches the library fails the suite. The
executed copies are not written back.
"""
from __future__ import annotations

import os

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
