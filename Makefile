# leadscore: the two commands of the README's quickstart, on a fresh Debian with Python 3.11.
#
#   make demo   install, generate 200,000 events and score them with examples/rules.yaml
#   make test   install system test dependencies (redis-server, chromium), lint, run the suite

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# apt needs root: use sudo only when we are not root already (CI containers often are).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

DEMO_CONTACTS ?= 5000
DEMO_EVENTS ?= 200000
DEMO_SEED ?= 7

.PHONY: help demo test lint system-deps clean

help:
	@echo "make demo   generate $(DEMO_EVENTS) events and score them (no Redis needed)"
	@echo "make test   install redis-server/chromium if absent, ruff check, full pytest suite"

# ---------------------------------------------------------------- virtualenv

# Debian's python3 has no ensurepip until python3-venv is installed: install it on demand.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "leadscore needs Python 3.11 or newer as $(PYTHON)" >&2; exit 1; }
	@if ! $(PYTHON) -m venv $(VENV) 2>/dev/null; then \
	  rm -rf $(VENV); \
	  echo "installing python3-venv with apt"; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) python3-venv; \
	  $(PYTHON) -m venv $(VENV); \
	fi

# Editable installs pick up code changes; reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[dev]"
	@touch $@ $(VENV)/.installed

# ---------------------------------------------------------------- demo

demo/events.jsonl: | $(VENV)/.installed
	@mkdir -p demo
	$(BIN)/leadscore generate --contacts $(DEMO_CONTACTS) --events $(DEMO_EVENTS) \
	  --seed $(DEMO_SEED) --out $@

demo: $(VENV)/.installed demo/events.jsonl
	$(BIN)/leadscore run --rules examples/rules.yaml --events demo/events.jsonl --out demo/out
	$(BIN)/leadscore calibrate --rules examples/rules.yaml --events demo/events.jsonl \
	  --conversion purchase --html demo/calibration.html

# ---------------------------------------------------------------- test

# redis-server backs the Redis tests; chromium the tracking-pixel browser test, which skips
# with its reason when chromium cannot be installed, so its failure does not stop us here.
system-deps:
	@if ! command -v redis-server >/dev/null; then \
	  echo "installing redis-server with apt"; \
	  $(SUDO) apt-get update -q && $(APT_INSTALL) redis-server; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium with apt"; \
	  { $(SUDO) apt-get update -q && $(APT_INSTALL) chromium; } || \
	    echo "chromium could not be installed; the browser test will skip"; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# pytest exits 5 when it collected no test: like any non-zero status, that fails make.
test: system-deps lint
	$(BIN)/python -m pytest

clean:
	rm -rf demo out
