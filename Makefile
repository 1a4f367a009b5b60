# The README's commands. Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Multi-device tests simulate 8 CPU devices; pytest-xdist uses both cores of a CI machine.
PYTEST_ARGS ?= -n 2 --durations=25

.PHONY: demo test install clean check-adapters

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m unified_petl.demo

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS) tests

# AdapterHub parity (not part of `make test`): adapters 1.3 pins transformers 4.57, so it gets
# its own venv; our side exports in $(VENV). Prints max |ours - AdapterHub| per method.
ADAPTERS_VENV := .venv-adapters

$(ADAPTERS_VENV)/.installed:
	test -x $(ADAPTERS_VENV)/bin/python || $(PYTHON) -m venv $(ADAPTERS_VENV)
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet 'adapters==1.3.*' torch==2.13.0 safetensors numpy
	touch $@

check-adapters: $(VENV)/.installed $(ADAPTERS_VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) tests/adapterhub/check_adapters.py --adapters-python $(ADAPTERS_VENV)/bin/python

clean:
	rm -rf $(VENV) $(ADAPTERS_VENV) *.egg-info
