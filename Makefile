# The README's commands. `make install` is idempotent and only installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies changed.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/plasmaart migrate
	$(BIN)/plasmaart serve

# The whole suite with coverage; the ledger package must stay at 100%.
test: install
	$(BIN)/python -m pytest --cov=plasmaart --cov-report=term:skip-covered
	$(BIN)/coverage report --include='*/plasmaart/ledger/*' --fail-under=100

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Also needs the PostgreSQL server binaries, pgbench and wrk (Debian packages).
# Every benchmark rewrites its own section of docs/performance.md; the options
# keep the whole run under 15 minutes on a 2-CPU machine (benchmarks/README.md).
# ledger_queries.py exits 1 when an aim or a query plan check fails; its
# section says which, and the benchmarks after it still run.
bench: install
	$(BIN)/python -m pip install --quiet --editable '.[test,dev,bench]'
	$(BIN)/python benchmarks/ledger_tps.py --seconds 2 --runs 3 --clients 1,8,64 --write-docs
	-$(BIN)/python benchmarks/ledger_queries.py --runs 5 --write-docs
	$(BIN)/python benchmarks/generations.py --seconds 2 --runs 3 --queue-runs 3 --jobs 300 --write-docs
	$(BIN)/python benchmarks/api_costs.py --seconds 2 --scaling-seconds 1 --generations 30 --rounds 4 --write-docs

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
