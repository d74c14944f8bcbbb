PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
# setuptools explains editable installs in warnings on every install: nothing to act on.
QUIET_PIP := PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install -q --disable-pip-version-check

.PHONY: run test lint install install-test bench clean ui-assets screenshots

$(BIN)/python:
	@$(PY) -m venv $(VENV)
	@$(QUIET_PIP) --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(QUIET_PIP) -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@$(QUIET_PIP) -e '.[test]'
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	@$(BIN)/tiercel server local --port $(PORT)

lint: install-test
	$(BIN)/ruff check engine projections api plugins tests bench scripts
	$(BIN)/ruff format --check engine projections api plugins tests bench scripts
	$(BIN)/mypy --strict engine

test: install-test lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The web UI's browser libraries (htmx, CodeMirror, uPlot) from the versions pinned in
# ui/package-lock.json into api/static/vendor/, which is committed: only this target needs Node.
ui-assets:
	cd ui && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

# The README's screenshots (docs/screenshots/*.png) from a throwaway server, through Debian's
# chromium (/usr/bin/chromium): about a minute.
screenshots: install-test
	$(BIN)/python -m scripts.screenshots

bench: install
	$(BIN)/python -m bench.core

clean:
	rm -rf $(VENV) build *.egg-info
