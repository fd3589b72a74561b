# Two commands on a fresh clone: `make demo` and `make test`. Needs Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
IDEA   ?= a marketplace for used lab equipment
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: demo interview dev test test-fast lint bench chaos clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e . --config-settings editable_mode=compat
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

demo: $(VENV)/.installed
	$(BIN)/masterplan demo "$(IDEA)"

# The interview in the terminal, then the masterplan built from it.
interview: $(VENV)/.installed
	$(BIN)/masterplan interview "$(IDEA)"

dev: $(VENV)/.installed
	$(BIN)/masterplan dev

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

# Fault scenarios on real processes, one table (bench/results/chaos.md); CHAOS_ARGS=--quick
chaos: $(VENV)/.installed-dev
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) masterplan.db masterplan.db-* .pytest_cache
