# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install system-deps run chat lint test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## Start the bot: every platform with a token, else the local web chat on http://127.0.0.1:8080
run: install
	$(BIN)/ghostbot run

## Terminal chat
chat: install
	$(BIN)/ghostbot chat

## Debian packages the tests use: a PostgreSQL server (the storage tests start a throwaway cluster on
## 127.0.0.1). Installed when missing and we may (root with apt-get); otherwise those tests skip.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
	   && [ "$$(id -u)" = 0 ]; then \
	  echo "installing postgresql (Debian) for the storage tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	fi

## Lint, format check (ruff) and type check (mypy, configured in pyproject.toml), as CI runs them
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The whole test suite: lint, then unit + end-to-end tests against loopback fakes
test: install system-deps lint
	NO_PROXY=127.0.0.1,localhost $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

## The quick benchmarks (about a minute); each prints one JSON object. The rest: benchmarks/README.md
bench: install
	$(BIN)/python benchmarks/core_budget.py --repeats 50
	$(BIN)/python benchmarks/core_throughput.py --messages 200
	$(BIN)/python benchmarks/storage_throughput.py -n 200
	$(BIN)/ghostbot bench generate --quick --skip-hf --dtypes float32

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
