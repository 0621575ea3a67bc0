# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# checkov (tests/deploy) pins dozens of packages that clash with the project's: its own venv.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION := 3.3.30

.PHONY: run test lint typecheck pytest install install-test browser kubectl checkov audit clean

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

## kubectl renders deploy/k8s (its built-in kustomize) for tests/deploy; Debian's if missing.
kubectl:
	@command -v kubectl >/dev/null 2>&1 || { \
		echo "installing kubectl (apt-get kubernetes-client) for tests/deploy"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

checkov: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

pytest: install-test browser kubectl checkov
	KGENTS_TEST_CHECKOV=$(abspath $(CHECKOV_VENV))/bin/checkov $(BIN)/pytest

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
	rm -rf $(VENV) $(AUDIT_VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache
