# medseg: `make demo` and `make test` set up .venv themselves (torch first, CPU build by default).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# BraTS 2025's brats-evaluation (on Panoptica, which pins numpy < 2.3) in an environment of its own: the
# tests that compare medseg's BraTS 2025 scoring with it run where it installed, and skip elsewhere
PANOPTICA_VENV ?= .venv-panoptica
PANOPTICA_SPEC ?= brats-evaluation==0.0.10
PANOPTICA_STAMP := $(PANOPTICA_VENV)/.installed
WITH_PANOPTICA = MEDSEG_PANOPTICA_PYTHON=$${MEDSEG_PANOPTICA_PYTHON:-$$(test -f $(PANOPTICA_STAMP) && echo $(abspath $(PANOPTICA_VENV))/bin/python)}

.PHONY: install panoptica demo demo-ct test test-fast lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,onnx,openvino]"
	touch $(STAMP)

install: $(STAMP)

$(PANOPTICA_STAMP):
	( test -x $(PANOPTICA_VENV)/bin/python || $(PYTHON) -m venv $(PANOPTICA_VENV) ) && \
	$(PANOPTICA_VENV)/bin/python -m pip install -q "$(PANOPTICA_SPEC)" && touch $(PANOPTICA_STAMP) || \
	echo "brats-evaluation did not install: the tests against it will skip"

panoptica: $(PANOPTICA_STAMP)

demo: $(STAMP)
	$(VENV)/bin/medseg demo --out runs/demo

demo-ct: $(STAMP)
	$(VENV)/bin/medseg demo ct --out runs/demo_ct

lint: $(STAMP)
	$(VENV)/bin/ruff check medseg tests tools
	$(VENV)/bin/ruff format --check medseg tests tools

test: lint panoptica
	$(WITH_PANOPTICA) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(WITH_PANOPTICA) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format medseg tests tools
	$(VENV)/bin/ruff check --fix medseg tests tools

clean:
	rm -rf runs .pytest_cache .ruff_cache
