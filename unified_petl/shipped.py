"""Files shipped with the package: the configs/ tree (base model configs in configs/models/,
the demo's configs in configs/demo/, the paper's configs).

In a source checkout (or an editable install) they are the repository's configs/ folder. A
wheel or `pip install .` carries the same tree as package data in unified_petl/configs/
(setup.cfg maps the package `unified_petl.configs` to the folder configs/), found through
importlib.resources, so the README's `configs/...` paths and `unified-petl count --base
bart-large` work from an installed package too.
"""
from __future__ import annotations

import os
from importlib import resources


def configs_dir() -> str:
    """The shipped configs/ folder: the installed package data, else the checkout's."""
    installed = resources.files("unified_petl").joinpath("configs")
    if installed.is_dir():
        return str(installed)
    package = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(package), "configs")


def config_path(*parts: str) -> str:
    """A path inside the shipped configs, e.g. config_path("demo", "mam.py")."""
    return os.path.join(configs_dir(), *parts)
