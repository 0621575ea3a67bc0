# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest install install-test browser audit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## Install and start the server on embedded defaults (SQLite, nats-server, demo LLM).
run: install
	$(BIN)/kgents serve

lint: install-test
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

typecheck: install-test
	$(BIN)/mypy

## Debian's Chromium for the console's end-to-end tests (they fail, not skip, without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (apt-get) for the console end-to-end tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

pytest: install-test browser
	$(BIN)/pytest

## Install test dependencies, then lint, type-check and run the whole suite.
test: lint typecheck pytest

## Audit the installed dependencies for known vulnerabilities (needs pypi.org). pip-audit runs
## from a venv of its own, so it never changes the project's.
AUDIT_VENV ?= .venv-audit
audit: install-test
	test -x $(AUDIT_VENV)/bin/pip-audit || \
		{ $(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/pip install --quiet pip-audit; }
	$(BIN)/pip freeze --exclude-editable > $(AUDIT_VENV)/requirements.txt
	$(AUDIT_VENV)/bin/pip-audit --strict --no-deps --disable-pip -r $(AUDIT_VENV)/requirements.txt

clean:
	rm -rf $(VENV) $(AUDIT_VENV) .pytest_cache .mypy_cache .ruff_cache
