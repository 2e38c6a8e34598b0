# leadscore: the two commands of the README's quickstart, on a fresh Debian with Python 3.11.
#
#   make demo   install, build the compiled engine, generate 200,000 events and score them
#   make test   install system test dependencies (redis-server, chromium), build, lint, run the
#               suite on the compiled engine, then the engine's tests on the interpreted one

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

# The compiled hot path (setup.py, leadscore/accel.py): rebuilt when its sources change.
COMPILED_SRC := leadscore/engine.py leadscore/engine.pxd leadscore/rules.py leadscore/rules.pxd \
  leadscore/matchers.py leadscore/matchers.pxd \
  leadscore/events.py leadscore/events.pxd leadscore/typed.py leadscore/typed.pxd \
  leadscore/records.py leadscore/records.pxd \
  flows/shards.py flows/shards.pxd flows/parse.py flows/parse.pxd \
  flows/redis_flow.py flows/redis_flow.pxd leadscore/readmodel.py leadscore/readmodel.pxd \
  state/codec.py state/codec.pxd state/resp.py state/resp.pxd leadscore/accel.py setup.py
COMPILED := leadscore/_compiled/.built
# What also runs on the interpreted hot path (the fallback) in `make test`.
PYTHON_ENGINE_TESTS := tests/test_engine_actions.py tests/test_engine_decay.py \
  tests/test_engine_fit_stages.py tests/test_engine_properties.py tests/test_engine_triggers.py \
  tests/test_merge.py tests/test_events.py tests/test_typed.py tests/test_flow.py \
  tests/test_matchers.py tests/test_records_json.py tests/test_resp.py tests/test_codec.py

.PHONY: help demo test lint system-deps build-deps compiled clean

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

# Editable installs pick up code changes; reinstall only when the dependencies change. The
# compiled engine is built by its own rule below (LEADSCORE_ENGINE=python: not twice).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	LEADSCORE_ENGINE=python $(PIP) install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	LEADSCORE_ENGINE=python $(PIP) install -e ".[dev]"
	@touch $@ $(VENV)/.installed

# ---------------------------------------------------------------- compiled engine

# A C compiler and the Python headers, with apt when absent. Without them leadscore still
# runs, as plain Python (slower), and `leadscore run` says so.
build-deps:
	@if ! command -v cc >/dev/null || ! $(PYTHON) -c 'import os, sys, sysconfig; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; \
	then \
	  echo "installing gcc and python3-dev with apt (for the compiled engine)"; \
	  { $(SUDO) apt-get update -q && $(APT_INSTALL) gcc libc6-dev python3-dev; } || \
	    echo "no C compiler could be installed; leadscore will run as plain Python"; \
	fi

# Cython in pure-Python mode, from the same .py files, into leadscore/_compiled/ (gitignored).
# Profile-guided with gcc (setup.py, LEADSCORE_PGO): build modules that count what runs, score
# a generated file with them (the training run, $(PGO_EVENTS) events), build again from those
# counts (kept in build/pgo/, gitignored). LEADSCORE_PGO=off, or any step failing (no gcc, no
# profile written, a build that does not load): one plain build instead.
PGO_DIR := build/pgo
PGO_EVENTS ?= 150000
BUILD_EXT := $(BIN)/python setup.py -q build_ext --inplace --force -j 2
$(COMPILED): $(COMPILED_SRC) | $(VENV)/.installed build-deps
	@$(BIN)/python -c 'import Cython' 2>/dev/null || $(PIP) install 'Cython>=3.1,<4'
	@rm -rf $(PGO_DIR) && mkdir -p $(PGO_DIR)
	@if [ "$${LEADSCORE_PGO:-on}" != off ] && \
	  LEADSCORE_PGO=generate $(BUILD_EXT) && \
	  $(BIN)/leadscore generate --contacts 10000 --events $(PGO_EVENTS) --seed 11 \
	    --out $(PGO_DIR)/events.jsonl >/dev/null && \
	  LEADSCORE_ENGINE=compiled $(BIN)/leadscore run --rules examples/rules.yaml \
	    --events $(PGO_DIR)/events.jsonl --out $(PGO_DIR)/out --workers 1 --no-progress \
	    >/dev/null && \
	  ls $(PGO_DIR)/profile/*.gcda >/dev/null 2>&1 && \
	  LEADSCORE_PGO=use $(BUILD_EXT) && \
	  LEADSCORE_ENGINE=compiled $(BIN)/python -c 'import leadscore.engine'; \
	then \
	  echo "built profile-guided (trained on $(PGO_EVENTS) generated events)"; \
	else \
	  echo "building without a profile (LEADSCORE_PGO=off, or the profile-guided build failed)"; \
	  LEADSCORE_PGO=off $(BUILD_EXT); \
	fi
	@rm -rf $(PGO_DIR)/events.jsonl $(PGO_DIR)/out
	@mkdir -p $(@D) && touch $@

compiled: $(COMPILED)

# ---------------------------------------------------------------- demo

demo/events.jsonl: | $(VENV)/.installed
	@mkdir -p demo
	$(BIN)/leadscore generate --contacts $(DEMO_CONTACTS) --events $(DEMO_EVENTS) \
	  --seed $(DEMO_SEED) --out $@

demo: $(VENV)/.installed $(COMPILED) demo/events.jsonl
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
# LEADSCORE_ENGINE=compiled: the suite fails at once if the compiled engine did not build.
test: system-deps lint $(COMPILED)
	LEADSCORE_ENGINE=compiled $(BIN)/python -m pytest
	LEADSCORE_ENGINE=python $(BIN)/python -m pytest -q $(PYTHON_ENGINE_TESTS)

clean:
	rm -rf demo out build leadscore/_compiled flows/_compiled state/_compiled leadscore/*.c flows/*.c state/*.c
