PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080

.PHONY: run test lint install install-test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/tiercel server local --port $(PORT)

lint: install-test
	$(BIN)/ruff check engine projections api plugins tests bench
	$(BIN)/ruff format --check engine projections api plugins tests bench
	$(BIN)/mypy --strict engine

test: install-test lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench.core

clean:
	rm -rf $(VENV) build *.egg-info
