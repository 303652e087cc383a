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
bench: install
	$(BIN)/python -m pip install --quiet --editable '.[test,dev,bench]'
	$(BIN)/python benchmarks/ledger_tps.py --write-docs
	$(BIN)/python benchmarks/ledger_queries.py --write-docs
	$(BIN)/python benchmarks/generations.py --write-docs

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
