# The README's commands. `make install` is idempotent and only installs.
# Each level of dependencies has its own stamp, rebuilt when pyproject.toml
# changes: `make run` installs the product only; `make test` adds the test
# extras, `make lint` and `make format` the dev tools, `make bench` both and
# the benchmarks' own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# `PORT=8080 make run` (or `make run PORT=8080`); HOST likewise. Unset, serve
# takes PLASMAART_PORT / PLASMAART_HOST, then 127.0.0.1:8000.
PORT ?=
HOST ?=

.PHONY: install install-test install-dev run test lint format bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall a level only when the project's dependencies changed.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[test,bench]'
	touch $@

# The product only: what `make run` needs.
install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

install-dev: $(DEV_STAMP)

run: install
	$(BIN)/plasmaart migrate
	$(BIN)/plasmaart serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# The whole suite, measuring the coverage of the ledger package, which must
# stay at 100% (only its files are traced: the tracer's work is cheaper).
test: install-test
	$(BIN)/python -m pytest --cov=plasmaart.ledger --cov-report=term:skip-covered
	$(BIN)/coverage report --include='*/plasmaart/ledger/*' --fail-under=100

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Also needs the PostgreSQL server binaries, pgbench and wrk (Debian packages).
# Every benchmark rewrites its own section of docs/performance.md; the options
# keep the whole run under 18 minutes on a 2-CPU machine (benchmarks/README.md).
# ledger_queries.py exits 1 when an aim or a query plan check fails; its
# section says which, and the benchmarks after it still run.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/ledger_tps.py --seconds 2 --runs 3 --clients 1,8,64 --write-docs
	$(BIN)/python benchmarks/group_commit.py --seconds 2 --runs 3 --threads 1,8,64 --write-docs
	-$(BIN)/python benchmarks/ledger_queries.py --runs 5 --write-docs
	$(BIN)/python benchmarks/generations.py --seconds 2 --runs 3 --connections 16,64 --queue-runs 3 --jobs 300 --py-spy --write-docs
	$(BIN)/python benchmarks/api_costs.py --seconds 2 --connections 16,64 --scaling 1,8 --scaling-seconds 1 --scaling-runs 2 --generations 30 --rounds 4 --write-docs
	$(BIN)/python benchmarks/fairness.py --seconds 6 --runs 2 --write-docs
	$(BIN)/python benchmarks/capacity.py --seconds 2 --runs 3 --jobs 200 --write-docs

# The bank test, long, with every fault mixed in: on SQLite, then on
# PostgreSQL, each until PLASMAART_SOAK_OPS operations completed (10,000 by
# default; `PLASMAART_SOAK_OPS=1500 make soak` for a shorter one), each run
# capped at PLASMAART_SOAK_MAX_S seconds, the whole under a hard `timeout`.
# Its figures replace the soak part of docs/reliability.md (also when a check
# failed; the exit status is the test's). See docs/reliability.md, The soak.
PLASMAART_SOAK_OPS ?= 10000
PLASMAART_SOAK_MAX_S ?= 2700
# sandbox, or stripe: the processes bill through the fake Stripe, its webhooks
# delivered as they happen, webhook storms among the faults.
PLASMAART_BANK_BILLING ?= sandbox
SOAK_DIR := .soak
soak: install-test
	rm -rf $(SOAK_DIR)
	PLASMAART_SOAK_OPS=$(PLASMAART_SOAK_OPS) PLASMAART_SOAK_MAX_S=$(PLASMAART_SOAK_MAX_S) \
	PLASMAART_BANK_BILLING=$(PLASMAART_BANK_BILLING) \
	PLASMAART_SOAK_REPORT_DIR=$(SOAK_DIR) timeout $$((2 * ($(PLASMAART_SOAK_MAX_S) + 600))) \
	$(BIN)/python -m pytest tests/chaos/test_bank.py -p no:cacheprovider -q -s; \
	status=$$?; $(BIN)/python -m tests.support.soak $(SOAK_DIR) && exit $$status

clean:
	rm -rf $(VENV) build .soak *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
