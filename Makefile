# The two commands of the README: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run demo test bench bench-smoke lint format migrate clean

# `make demo` talks to the API of a running `make run`.
SESSION_SUPERVISOR_API ?= http://127.0.0.1:$(or $(PORT),7500)
export SESSION_SUPERVISOR_API

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[dev]"
	touch $@ $(VENV)/.installed-test

$(VENV)/.installed-test: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[test]"
	touch $@

run: $(VENV)/.installed-dev
	$(BIN)/python scripts/run.py

# With `make run` up: start the simulator's seeded demo workload and watch it to the end.
demo: $(VENV)/.installed-dev
	$(BIN)/session-supervisor ping --wait 60
	$(BIN)/session-supervisor start demo-customer demo-object
	$(BIN)/session-supervisor watch demo-customer

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Side-by-side benchmarks (not part of make test); bench/results.json gets the figures.
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

bench-smoke: $(VENV)/.installed-dev
	$(BIN)/python -m bench --smoke

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: $(VENV)/.installed-test
	$(BIN)/alembic upgrade head

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
