# fundus2video: every target sets up .venv itself on first use. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXP ?= smoke
ARGS ?=
export NO_ALBUMENTATIONS_UPDATE := 1

.DEFAULT_GOAL := help
.PHONY: help install train config test test-all lint clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# torch first: 2.13.0 is the local CPU wheel; a bare `torch` would fetch a multi-GB CUDA build
$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install fundus2video with its pinned dependencies

train: install ## train an experiment: make train [EXP=smoke] [ARGS="key=value ..."]
	@$(PY) -m fundus2video train $(EXP) $(ARGS)

config: install ## print an experiment's resolved configuration: make config EXP=... [ARGS=...]
	@$(PY) -m fundus2video config $(EXP) $(ARGS)

test: install ## run the test suite (what CI runs)
	$(PY) -m pytest -q

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
