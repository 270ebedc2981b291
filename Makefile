# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install run chat test test-fast bench clean

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

## The whole test suite (unit + end-to-end against loopback fakes)
test: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	NO_PROXY=127.0.0.1,localhost $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/ghostbot bench generate

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
