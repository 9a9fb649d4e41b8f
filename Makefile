# The two commands a new user types: `make run` and `make test`. Both (re)create .venv as needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
CORPUS ?=
# gRPC API sources; the Python stubs are generated from them (never committed).
PROTOS := $(wildcard proto/papersearch/*/*.proto)
PROTO_GEN := services/papersearch/api/generate.py

.PHONY: install proto run test bench clean

$(STAMP): pyproject.toml Makefile setup.py $(PROTOS) $(PROTO_GEN)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls CUDA (GBs).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[export,dev]'
	# gRPC stubs (pip's build_py made them too; this uses .venv's grpcio-tools, matching its grpcio).
	$(PY) -m papersearch.api.generate
	touch $(STAMP)

install: $(STAMP)

# (Re)generate services/papersearch/api/v1/papersearch_pb2*.py from proto/ (make install does too).
proto: $(STAMP)
	$(PY) -m papersearch.api.generate

# Prepare the models (export; train the default reranker once, cached), ingest the sample
# corpus into the embedded index (resumable; skips papers already there), then serve it:
# local Ray + the Serve app + the gRPC gateway on 127.0.0.1:50051 until Ctrl-C.
run: install
	$(VENV)/bin/papersearch models export --all
	$(VENV)/bin/papersearch ingest $(CORPUS)
	$(VENV)/bin/papersearch serve

test: install
	$(PY) -m pytest $(ARGS)

bench: install
	$(PY) benchmarks/encoders.py

clean:
	rm -rf $(VENV) build *.egg-info
	rm -f services/papersearch/api/v1/*_pb2*.py* services/papersearch/api/v1/*.proto
