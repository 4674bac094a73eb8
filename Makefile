# CT-SGAN companion. `make reproduce` and `make test` are the contract (README); each sets up .venv when missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ctsgan-installed
PROFILE ?= smoke
# Tests and notebooks write their data/ and runs/ into a throwaway root, never into the checkout.
TEST_ROOT ?= $(shell mktemp -d /tmp/ctsgan-test.XXXXXX)

.PHONY: setup reproduce test test-slow test-browser lab figures clean help

help:
	@echo "make setup       create .venv and install ctsgan_lib[dev] + the 'ctsgan' Jupyter kernel"
	@echo "make reproduce   run notebooks 01-08 on the embedded phantom data (PROFILE=smoke by default)"
	@echo "make test        unit + integration tests and nbval over every notebook (< 15 min on 2 cores)"
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
	$(BIN)/ctsgan reproduce --profile $(PROFILE)

test: setup
	CTSGAN_ROOT=$(TEST_ROOT) MPLBACKEND=Agg $(BIN)/python -m pytest -p no:cacheprovider -m "not slow and not browser" \
		--nbval-lax --nbval-kernel-name ctsgan --durations=15 tests notebooks

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
