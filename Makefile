# The two commands the README opens with. Each creates .venv when missing and installs the locked
# dependencies before it runs: `make demo` the runtime lock (requirements.lock) only, `make test` also the
# dev lock (requirements-dev.lock: test and lint tools). Both locks carry hashes (pip --require-hashes) and are
# complete, so pip installs exactly them (--no-deps: no resolver that could reach for a release newer than the
# lock, as httpx 0.29.0 did for prefect's `httpx[http2]`) and `pip check` proves them consistent.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes --no-deps -r requirements.lock $(PIP_QUIET)
	$(PIP) --no-deps -e . $(PIP_QUIET)
	$(BIN)/python -m pip check --disable-pip-version-check
	$(BIN)/python -c "import prefect, polars, duckdb, great_expectations, contact_recon"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.lock
	$(PIP) --require-hashes --no-deps -r requirements-dev.lock $(PIP_QUIET)
	$(BIN)/python -m pip check --disable-pip-version-check
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/recon demo

# mypy (typecheck, below), lint, then every test: tests/unit, tests/contract and tests/e2e on two pytest-xdist
# workers (pyproject addopts: -n 2 --dist loadfile; warnings are errors there). `$(BIN)/python -m pytest -n 0`
# runs them in one process.
test: $(DEV_STAMP) typecheck
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

# mypy (pyproject.toml [tool.mypy]; strict on model, engine and store) over the package as the wheel lays it out:
# flows/, tasks/ and checks/ are linked in as contact_recon.flows/.tasks/.checks, the rest as it is.
TYPECHECK := $(VENV)/typecheck/contact_recon
.PHONY: typecheck
typecheck: $(DEV_STAMP)
	rm -rf $(VENV)/typecheck && mkdir -p $(TYPECHECK)
	for entry in contact_recon/*; do ln -s "$(CURDIR)/$$entry" $(TYPECHECK)/; done
	for folder in flows tasks checks; do ln -s "$(CURDIR)/$$folder" $(TYPECHECK)/$$folder; done
	$(BIN)/python -m mypy $(TYPECHECK)

# The report tests look at report.html in headless Chromium: Debian's chromium package, driven by playwright
# (never `playwright install`: it downloads a browser). Installed here when we are root, else a clear error.
CHROMIUM := /usr/bin/chromium
test: $(CHROMIUM)
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the report tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "error: $(CHROMIUM) is missing; the report tests need it: sudo apt-get install -y chromium" >&2; \
		exit 1; \
	fi
	@test -x $(CHROMIUM) || { echo "error: chromium was installed but $(CHROMIUM) is not there" >&2; exit 1; }

# Every benchmark in bench/ (bench/run_all.py): bench/results/latest.json and latest.md; exit 1 on a missed goal.
bench: $(DEV_STAMP)
	$(BIN)/python bench/run_all.py

# The same at small sizes (about two minutes): bench/results/quick.json and quick.md.
.PHONY: bench-quick
bench-quick: $(DEV_STAMP)
	$(BIN)/python bench/run_all.py --quick

# The chaos suite at full size (tests/e2e/test_chaos.py: 2,000 people, sandboxes at --rate-scale 10); `make test`
# runs the same stories at 40 people. -rP prints each run's exit code, time and last line.
.PHONY: chaos
chaos: $(DEV_STAMP)
	RECON_CHAOS_SCALE=full $(BIN)/python -m pytest tests/e2e/test_chaos.py -n 0 -rP --show-capture=stdout --timeout 3600 \
		-p no:cacheprovider

# Re-resolve both locks after changing dependencies in pyproject.toml (needs the package index). The current
# runtime pins are kept as constraints, so only what the change needs moves; the dev lock keeps the runtime
# lock's pins exactly. To upgrade a package, delete its line from requirements.lock first.
lock: $(STAMP)
	$(PIP) uv
	grep -o '^[A-Za-z0-9_.-]*==[^ ]*' requirements.lock > $(VENV)/pins.txt
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --no-header -q \
		-c $(VENV)/pins.txt -o $(VENV)/runtime.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --no-header -q \
		-c $(VENV)/runtime.lock -o $(VENV)/dev.lock
	{ sed -n '1,2p' requirements.lock; cat $(VENV)/runtime.lock; } > $(VENV)/runtime.new
	{ sed -n '1,2p' requirements-dev.lock; cat $(VENV)/dev.lock; } > $(VENV)/dev.new
	mv $(VENV)/runtime.new requirements.lock
	mv $(VENV)/dev.new requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache
