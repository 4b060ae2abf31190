# medseg: `make demo` and `make test` set up .venv themselves (torch first, CPU build by default).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo demo-ct test test-fast lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,onnx,openvino]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medseg demo --out runs/demo

demo-ct: $(STAMP)
	$(VENV)/bin/medseg demo ct --out runs/demo_ct

lint: $(STAMP)
	$(VENV)/bin/ruff check medseg tests tools
	$(VENV)/bin/ruff format --check medseg tests tools

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format medseg tests tools
	$(VENV)/bin/ruff check --fix medseg tests tools

clean:
	rm -rf runs .pytest_cache .ruff_cache
