# The two commands of the README: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run demo test test-fast bench bench-smoke lint format migrate clean lock

# `make demo` talks to the API of a running `make run`.
SESSION_SUPERVISOR_API ?= http://127.0.0.1:$(or $(PORT),7500)
export SESSION_SUPERVISOR_API

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs take their versions from requirements-dev.lock (every extra but render);
# requirements.lock pins the runtime alone, for docker/Dockerfile. Both come from setup.cfg.
LOCK := requirements-dev.lock

$(VENV)/.installed-dev: setup.cfg pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) install -c $(LOCK) -e ".[dev]"
	touch $@ $(VENV)/.installed-test

$(VENV)/.installed-test: setup.cfg pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) install -c $(LOCK) -e ".[test]"
	touch $@

# After editing setup.cfg's requirements: pins already in the lock files stay, new ones are
# added. LOCK_ARGS=--upgrade (or --upgrade-package NAME) moves them.
PIP_COMPILE := $(BIN)/pip-compile --quiet --strip-extras --no-allow-unsafe --annotation-style line \
	--no-emit-find-links --no-emit-index-url --no-emit-trusted-host --newline lf $(LOCK_ARGS)

lock: export CUSTOM_COMPILE_COMMAND := make lock
lock: $(VENV)/.installed-dev
	$(PIP_COMPILE) --extra test --extra dev --extra flower -o $(LOCK) setup.cfg
	$(PIP_COMPILE) --extra flower -c $(LOCK) -o requirements.lock setup.cfg

run: $(VENV)/.installed-dev
	$(BIN)/python scripts/run.py

# With `make run` up: start the simulator's seeded demo workload and watch it to the end.
demo: $(VENV)/.installed-dev
	$(BIN)/session-supervisor ping --wait 60
	$(BIN)/session-supervisor start demo-customer demo-object
	@echo "demo: watch it fill in at $(SESSION_SUPERVISOR_API)/dashboard/demo-customer"
	$(BIN)/session-supervisor watch demo-customer

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick gear: unit and integration tests of the app, one pytest-xdist worker per core
# (each worker has a database and a Redis database of its own). Gears: tests/conftest.py.
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto --dist worksteal -m "unit or integration" \
		tests/unit tests/cli tests/integration $(PYTEST_ARGS)

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
