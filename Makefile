# fundus2video: every target sets up .venv itself on first use. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXP ?= fundus2video_cpu
ARGS ?=
SWEEP ?= smoke
RESUME ?=
INIT ?=
export NO_ALBUMENTATIONS_UPDATE := 1

.DEFAULT_GOAL := help
.PHONY: help install train config demo-data data-check study study-report sweep bench test test-fast lint clean \
	demo browser-deps gpu-check wheel-check

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# torch first: 2.13.0 is the local CPU wheel; a bare `torch` would fetch a multi-GB CUDA build
$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,export,hub]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install fundus2video with its pinned dependencies

train: install ## train an experiment: make train [EXP=fundus2video_cpu] [ARGS="key=value ..."] [RESUME=last|path] [INIT=ckpt]
	@$(PY) -m fundus2video train $(EXP) $(ARGS) $(if $(RESUME),--resume $(RESUME)) $(if $(INIT),--init-from $(INIT))

config: install ## print an experiment's resolved configuration: make config EXP=... [ARGS=...]
	@$(PY) -m fundus2video config $(EXP) $(ARGS)

demo-data: install ## write the phantom to demo_data/ as case folders (mp4 and png layouts)
	$(PY) -m fundus2video data phantom --out demo_data/phantom --cases 56 --size 128 --frames 8 --video mp4 --overwrite
	$(PY) -m fundus2video data phantom --out demo_data/phantom_png --cases 56 --size 128 --frames 8 --video png --overwrite

data-check: install ## read every case of DATA (a folder or manifest CSV) and list bad ones: make data-check DATA=...
	@$(PY) -m fundus2video data check $(DATA) $(ARGS)

JOBS ?= 2
STUDY ?= phantom_v2
study: install ## a study, every variant x seed, resumable (results/STUDY_study/): make study [STUDY=phantom_v2|phantom] [JOBS=2] [ARGS=...]
	$(PY) -m fundus2video study $(STUDY) --jobs $(JOBS) --readme docs/STUDY.md $(ARGS)

study-report: install ## rebuild a study's table, plots and docs/STUDY.md block from its results/ alone: make study-report [STUDY=...]
	$(PY) -m fundus2video study $(STUDY) --report-only --readme docs/STUDY.md

sweep: install ## wandb sweep (creates it, starts an agent): make sweep SWEEP=smoke [COUNT=N] [LOCAL=1] [ARGS=...]
	@$(PY) -m fundus2video sweep $(SWEEP) $(if $(LOCAL),--local) $(if $(COUNT),--count $(COUNT)) $(ARGS)

bench: install ## run benchmarks/*.py; JSON results gathered in benchmarks/results.json
	@set -e; echo "{" > benchmarks/results.json.tmp; first=1; \
	for f in $(filter-out benchmarks/gpu_%.py,$(wildcard benchmarks/[!_]*.py)); do name=$$(basename $$f .py); \
	  echo "running $$f" >&2; \
	  [ $$first = 1 ] || echo "," >> benchmarks/results.json.tmp; first=0; \
	  printf '"%s": ' $$name >> benchmarks/results.json.tmp; $(PY) $$f >> benchmarks/results.json.tmp; done; \
	echo "}" >> benchmarks/results.json.tmp; mv benchmarks/results.json.tmp benchmarks/results.json; \
	cat benchmarks/results.json

# on a GPU machine, with a CUDA torch in .venv (what it needs: the top of benchmarks/gpu_check.py); no
# `install` prerequisite: that could call pip where the package index is unreachable
gpu-check: ## the GPU check: mixed precision, speed switches, cuda vs cpu, DDP (NCCL): make gpu-check [ARGS=--dry-run]
	@test -x $(PY) || { echo "gpu-check: no $(PY): make install, then a CUDA torch (see benchmarks/gpu_check.py)" >&2; exit 2; }
	@$(PY) benchmarks/gpu_check.py $(ARGS)

# the browser demo: gradio in the [demo] extra, installed on first use (the core install stays as it is)
CKPT ?= runs/fundus2video_cpu/latest/checkpoints/last.ckpt
PORT ?= 7860
HOST ?= 127.0.0.1
$(VENV)/.demo-installed: $(VENV)/.installed setup.cfg
	$(PY) -m pip install --quiet -e ".[demo]"
	@touch $@

demo: $(VENV)/.demo-installed ## the browser demo (gradio): make demo [CKPT=runs/fundus2video_cpu/latest/...] [PORT=7860]
	@$(PY) -m fundus2video demo --ckpt $(CKPT) --port $(PORT) --host $(HOST)

# what tests/test_demo.py's browser test needs: Debian's chromium and its driver (apt, only when missing;
# sudo when not root), the [demo] extra, selenium and gradio_client
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser-deps: $(VENV)/.demo-installed ## install chromium + chromedriver (apt, when missing), selenium, gradio_client
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; fi
	$(PY) -m pip install --quiet "selenium>=4.20,<5" gradio_client

# the suite runs in one worker per core (pytest-xdist), each with one thread: its tensors are small, so
# threads inside a test mostly wait for each other while a second worker keeps the other core busy
TEST_JOBS ?= auto
test: install ## run the whole test suite (what CI runs): make test [TEST_JOBS=auto|N|0]
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS)

test-fast: install ## the suite without the end-to-end trainings marked slow (the edit loop; CI runs all)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) -m "not slow"

wheel-check: install ## build a wheel, install it in a clean virtualenv, run its commands outside the checkout (CI)
	bash .ci/wheel-check

lint: install ## ruff (CI runs it before the tests)
	$(VENV)/bin/ruff check .

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
