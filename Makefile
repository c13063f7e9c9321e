# Meshgate: the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration e2e bench clean venv

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is required" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meshgate demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

e2e: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

bench: $(STAMP)
	bash bench/setup.sh
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
