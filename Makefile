# The two commands a new user needs: `make demo` and `make test`.
# Everything else here is what they are made of.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What each purpose installs into the project's virtualenv (pyproject.toml extras).
RUN_EXTRAS  := postgres
TEST_EXTRAS := dev,quantum
# Test processes (pytest-xdist), one per core of the project's machine; 0 runs the suite in
# this process. Each test has its own database, broker topics and ports (docs/development.md).
TEST_WORKERS ?= 2

.PHONY: install install-dev demo serve test lint format bench clean

# Idempotent: the virtualenv is created once; each extras set is (re)installed only when
# pyproject.toml changed since it was last installed.
install: $(VENV)/.installed-$(RUN_EXTRAS)
install-dev: $(VENV)/.installed-$(TEST_EXTRAS)

$(VENV)/.installed-%: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "OpsTwin needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	@touch $@

demo: install
	$(BIN)/opstwin demo

serve: install
	$(BIN)/opstwin serve

lint: install-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy src

format: install-dev
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

bench: install-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
