# The two commands the README opens with. Each creates .venv when missing and installs the locked
# dependencies (requirements.lock) before it runs.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock $(PIP_QUIET)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e . $(PIP_QUIET)
	$(BIN)/python -c "import prefect, polars, duckdb, great_expectations, contact_recon"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recon demo

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/generate.py

# Re-resolve the lock after changing dependencies in pyproject.toml (needs network to PyPI).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
