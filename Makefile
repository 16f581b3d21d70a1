# Both targets create or reuse .venv; it is re-installed only when a requirement file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint

$(STAMP): requirements.txt requirements-test.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out runs/demo

# Two pytest workers (about 17 minutes of pytest on a slow 2-core machine); `make test WORKERS=N` for more.
WORKERS ?= 2

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -n $(WORKERS) tests

lint: $(STAMP)
	$(PY) -m ruff check alpamayo_jax tools tests experiments
	$(PY) -m ruff format --check alpamayo_jax tools tests experiments
