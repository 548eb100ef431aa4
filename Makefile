# The two commands a new user needs: `make demo` and `make test`.
# Everything else here is what they are made of.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras installed into the project's virtualenv; `make test` needs `dev` (which pulls `postgres`).
EXTRAS ?= dev

.PHONY: install demo serve test lint format bench clean

# Idempotent: creates the virtualenv once, reinstalls only when pyproject.toml changed.
install: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "OpsTwin needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(BIN)/opstwin demo

serve: install
	$(BIN)/opstwin serve

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy src

format: install
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
