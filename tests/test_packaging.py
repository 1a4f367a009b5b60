"""A non-editable install carries configs/: the wheel, installed alone into a folder, runs
`count --base bart-large` and finds the demo's configs (before: configs/ was not packaged, so
both failed outside a checkout)."""
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

from setuptools import find_packages

from unified_petl.delta import budget

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CHECK = r"""
import json, os, sys
import unified_petl
from unified_petl import demo
from unified_petl.cli import main
from unified_petl.train.config import load_config

config = load_config(os.path.join(demo.CONFIG_DIR, "mam.py"))
print(json.dumps({"package": unified_petl.__file__, "demo": demo.available(),
                  "config_dir": demo.CONFIG_DIR, "method": config.method}))
main(["count", "--base", "bart-large", "--method", "lora(r=8)", "--json"])
"""


def test_wheel_ships_the_configs(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ("unified_petl", "configs"):
        shutil.copytree(os.path.join(ROOT, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(src)], check=True, timeout=300)
    (wheel,) = glob.glob(str(dist / "*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # setup.cfg lists the packages by hand: every package of the source tree is in the wheel
    for package in find_packages(ROOT, include=["unified_petl*"]):
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    shipped = {os.path.relpath(os.path.join(folder, f), os.path.join(ROOT, "configs"))
               for folder, _, files in os.walk(os.path.join(ROOT, "configs"))
               for f in files if f.endswith((".py", ".json"))}
    assert shipped and {f"unified_petl/configs/{p}" for p in shipped} <= names

    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), wheel], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               JAX_PLATFORMS="cpu", XLA_FLAGS="")
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, count = done.stdout.split("\n", 1)
    found = json.loads(first)
    assert found["package"].startswith(str(target))  # the wheel, not this checkout
    assert found["config_dir"].startswith(str(target))
    assert {"mam", "lora", "full", "control"} <= set(found["demo"])
    assert found["method"].startswith("mam(")
    assert json.loads(count) == budget.count_for("bart-large", "lora(r=8)")
