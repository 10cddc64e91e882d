# Two commands: `make run` starts the supervisor with ./config.toml,
# `make test` runs the whole suite. Both bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config.toml

.PHONY: run test lint check bench clean

$(VENV)/.installed: pyproject.toml setup.py core/_spawn.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m core --config $(CONFIG)

check: $(VENV)/.installed
	$(PY) -m core check $(CONFIG)

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info core/_spawn*.so
