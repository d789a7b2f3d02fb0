# The two user commands: `make run` and `make test`. Everything they need is installed from PyPI and npm.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=$(VENV) $(BIN)/uv

.PHONY: install run test test-unit lint bench chaos histories tokens clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet uv==0.13.8

$(VENV)/.installed: uv.lock pyproject.toml | $(BIN)/uv
	$(UV) sync --frozen --active --quiet
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed

run: install
	$(BIN)/python -m devstack.run

test: install
	$(BIN)/python -m pytest -q

# The tests that need no server (pure logic; workflows on the time-skipping test server).
test-unit: install
	$(BIN)/python -m pytest -q tests/models/test_lifecycle.py tests/models/test_amounts.py \
		tests/models/test_addresses.py tests/activities/test_fees.py tests/activities/test_rpc_errors.py \
		tests/api/test_body_guard.py tests/test_settings.py tests/workflows

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: install
	$(BIN)/python bench/throughput.py

# The long seeded chaos run (docs/reliability.md); a 50-fault run is part of `make test`.
chaos: install
	$(BIN)/python -m tests.e2e.chaos --faults $(or $(FAULTS),1000) --seed $(or $(SEED),7)

histories: install
	$(BIN)/python -m tests.histories.make_histories

tokens: node_modules/.installed
	node contracts/build.js

clean:
	rm -rf .data
