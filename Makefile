# make run: create .venv if missing, install the pinned stack + this project, run the pipeline.
# make test: the same install (with Debian's chromium for the browser tests), the linter, then the test suite
# less the tests marked scale; make test-scale runs those (several processes each: multi-worker training, Dask).
SHELL := /bin/bash
VENV ?= .venv
ROOT ?= $(HOME)/pneumonia-runs
RUN_ARGS ?=
PYTEST_ARGS ?=

# Python 3.10: `python3.10` if it really runs (a pyenv shim may exist but fail), else pyenv's 3.10.
PYTHON310 := $(shell \
  if python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then echo python3.10; \
  else for p in $$(pyenv root 2>/dev/null)/versions/3.10.*/bin/python; do \
    [ -x "$$p" ] && "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; \
  done; fi)

STAMP := $(VENV)/.installed
# Debian's chromium, which the web page's browser tests drive headless through Playwright.
CHROMIUM := /usr/bin/chromium

.PHONY: install run lint test test-scale clean-venv

install: $(STAMP) $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi

$(STAMP): requirements.txt constraints.txt setup.py
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: Python 3.10 not found. TFX 1.16 needs it: install python3.10 (e.g. 'pyenv install 3.10' or 'apt-get install python3.10 python3.10-venv')." >&2; exit 1; fi
	@[ -x $(VENV)/bin/python ] || $(PYTHON310) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt pip setuptools wheel
	$(VENV)/bin/pip install -q -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/pneumonia run --root $(ROOT) $(RUN_ARGS)

# ruff (pinned in requirements.txt) lints and checks the formatting of the whole tree; `make test` runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint $(STAMP) $(CHROMIUM)
	$(VENV)/bin/python -m pytest tests -m 'not scale' $(PYTEST_ARGS)

test-scale: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m scale $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
