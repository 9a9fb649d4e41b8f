# The two commands a new user types: `make run` and `make test`. Both (re)create .venv as needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install run test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls CUDA (GBs).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[export,dev]'
	touch $(STAMP)

install: $(STAMP)

# Grows with the serving issue: prepare models, ingest the sample corpus, start the service.
run: install
	$(VENV)/bin/papersearch models export --all

test: install
	$(PY) -m pytest $(ARGS)

bench: install
	$(PY) benchmarks/encoders.py

clean:
	rm -rf $(VENV) build *.egg-info
