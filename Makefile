# Quick start: `make demo` and `make test` each build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow bench clean

$(VENV)/.base: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.base
	$(PY) -m flux_jax.demo

test: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(VENV)/.dev
	$(PY) -m pytest -q -m slow tests

bench: $(VENV)/.base
	$(PY) -m flux_jax.bench forward

clean:
	rm -rf $(VENV) build *.egg-info
