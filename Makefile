# CT-SGAN companion. `make reproduce` and `make test` are the contract (README); each sets up .venv when missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ctsgan-installed
PROFILE ?= smoke
# PRETRAINED=1: notebooks 02 and 03 use the shipped models of pretrained/$(PROFILE)/ instead of training
PRETRAINED ?= 0
# Tests and notebooks write their data/ and runs/ into a throwaway root, never into the checkout.
TEST_ROOT ?= $(shell mktemp -d /tmp/ctsgan-test.XXXXXX)

.PHONY: setup reproduce test test-portable test-slow test-browser lab figures clean help

help:
	@echo "make setup       create .venv and install ctsgan_lib[dev] + the 'ctsgan' Jupyter kernel"
	@echo "make reproduce   run notebooks 01-08 on the embedded phantom data (PROFILE=smoke by default;"
	@echo "                 PRETRAINED=1: notebooks 02 and 03 use the shipped models of pretrained/<PROFILE>/)"
	@echo "make test        unit + integration tests and nbval over every notebook (< 15 min on 2 cores)"
	@echo "make test-portable the tests marked 'portable' with numpy's SIMD dispatch and torch's vector kernels off"
	@echo "make test-slow   the slower variants (paper-size step, long kill/resume)"
	@echo "make test-browser JupyterLab driven by headless Chromium (needs Debian's chromium)"
	@echo "make lab         JupyterLab on localhost with notebooks/ open"
	@echo "make figures     regenerate figures/ from runs/$(PROFILE) (after make reproduce)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 not found"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name ctsgan --display-name "Python (ctsgan)" >/dev/null
	@touch $(STAMP)

reproduce: setup
	$(BIN)/ctsgan reproduce --profile $(PROFILE)$(if $(filter 1,$(PRETRAINED)), --pretrained)

# nbval runs every notebook, then copies of 02 and 03 with `pretrained = True` (tests/pretrained_notebooks.py).
test: setup
	root=$(TEST_ROOT); $(BIN)/python tests/pretrained_notebooks.py $$root/notebooks-pretrained >/dev/null && \
	CTSGAN_ROOT=$$root MPLBACKEND=Agg $(BIN)/python -m pytest -p no:cacheprovider -m "not slow and not browser" \
		--nbval-lax --nbval-kernel-name ctsgan --durations=15 tests notebooks $$root/notebooks-pretrained

# The tests that compare with numbers committed from another machine, or with another run (resume, shards), rerun with
# numpy's runtime SIMD dispatch switched off (every optional feature this CPU has, e.g. AVX2/AVX512F) and torch's
# default (non-vectorised) kernels: they must pass on any x86-64/arm64 CPU, not only on the one they were written on.
NPY_FEATURES = $(shell $(BIN)/python -c "from numpy._core._multiarray_umath import __cpu_features__ as f, 	__cpu_baseline__ as b, __cpu_dispatch__ as d; print(' '.join(k for k in d if f.get(k) and k not in b))" 2>/dev/null)

test-portable: setup
	@echo "NPY_DISABLE_CPU_FEATURES="$(NPY_FEATURES)" ATEN_CPU_CAPABILITY=default"
	NPY_DISABLE_CPU_FEATURES="$(NPY_FEATURES)" ATEN_CPU_CAPABILITY=default CTSGAN_ROOT=$(TEST_ROOT) MPLBACKEND=Agg 		$(BIN)/python -m pytest -p no:cacheprovider -m "portable and not slow" tests

test-slow: setup
	CTSGAN_ROOT=$(TEST_ROOT) MPLBACKEND=Agg $(BIN)/python -m pytest -p no:cacheprovider -m slow tests

test-browser: setup
	CTSGAN_ROOT=$(TEST_ROOT) $(BIN)/python -m pytest -p no:cacheprovider -m browser tests/browser

lab: setup
	$(BIN)/python -m ctsgan_lib.lab $(LAB_ARGS)   # e.g. make lab LAB_ARGS="--no-browser --port 8890"

figures: setup
	$(BIN)/ctsgan reproduce --profile $(PROFILE) --only 07

clean:
	rm -rf $(VENV) build *.egg-info
