# ModelOps Operator: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_OPERATOR_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its test and dev tools

controlplane: ## Build the Kubernetes control plane (Go 1.26+; cached by the hash of go.sum)
	operator/controlplane/build.sh

test: $(STAMP) controlplane ## Run the whole offline test suite (unit, integration, e2e)
	$(PY) -m pytest $(PYTEST_ARGS)

faults: $(STAMP) controlplane ## Run the fault-injection suite only (API faults, killed operators)
	$(PY) -m pytest tests/faults -s $(PYTEST_ARGS)

unit: $(STAMP) ## Run the unit tests only
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## Lint and check formatting with ruff
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/ruff format --check operator tests

format: $(STAMP) ## Format the code with ruff
	$(VENV)/bin/ruff check --fix operator tests
	$(VENV)/bin/ruff format operator tests

typecheck: $(STAMP) ## Type-check the package with mypy (strict)
	$(VENV)/bin/mypy

crds: $(STAMP) ## Regenerate crds/*.yaml from the API models
	$(PY) -m modelops crds

verify-crds: $(STAMP) ## Fail if crds/*.yaml differ from what the models generate
	$(PY) -m modelops crds --check

run: $(STAMP) ## Run the operator against the current kubeconfig
	$(PY) -m modelops run

demo: $(STAMP) controlplane ## The whole loop on a local Kubernetes control plane
	$(PY) -m modelops local demo

bench: bench-drift bench-serve bench-http bench-controlplane bench-operator ## Print every benchmark (numbers, not pass/fail)

bench-drift: $(STAMP) ## Drift statistics: profile build, sketch fill, one check, vs exact KS
	$(PY) tests/bench/bench_drift.py

bench-controlplane: $(STAMP) controlplane ## Control plane and local cluster: start time, memory, stop time
	$(PY) tests/bench/bench_controlplane.py

bench-operator: $(STAMP) controlplane ## The operator at N = 100/500/1000 models vs a no-op Kopf floor (BENCH_OPERATOR_ARGS=--quick)
	$(PY) tests/bench/bench_operator.py $(BENCH_OPERATOR_ARGS)

bench-serve: $(STAMP) controlplane ## Model server under wrk: floor, no-op handler, gRPC (h2load, ghz; vs grpc.aio), MLServer
	@command -v wrk >/dev/null || (apt-get install -y wrk >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y wrk >/dev/null))
	@command -v h2load >/dev/null || (apt-get install -y nghttp2-client >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y nghttp2-client >/dev/null))
	$(PY) tests/bench/bench_serve.py

bench-http: $(STAMP) ## The server's HTTP layer vs uvicorn and granian, same dispatch (decides issue 12.5)
	@command -v wrk >/dev/null || (apt-get install -y wrk >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y wrk >/dev/null))
	@$(PY) -c 'import uvicorn, granian' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) tests/bench/bench_http_stack.py

deploy: ## Install the operator on the current cluster (kubectl apply -k)
	kubectl apply --server-side -k manifests/overlays/prod

undeploy: ## Remove the operator (CRDs and their objects included)
	kubectl delete -k manifests/overlays/prod

images: ## Build the operator and runtime images (needs a Docker engine)
	docker build -f images/operator/Dockerfile -t modelops-operator:dev .
	docker build -f images/runtime/Dockerfile -t modelops-runtime:dev .

e2e-kind: $(STAMP) ## Run the real-cluster tests (needs Docker and kind)
	$(PY) -m pip install --quiet -e '.[kind]'
	$(PY) -m pytest -m kind tests/kind

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .venv-checkov .pytest_cache .mypy_cache .ruff_cache .modelops bin

.PHONY: help install controlplane test faults unit lint format typecheck crds verify-crds run demo bench bench-drift bench-serve bench-http bench-controlplane bench-operator deploy undeploy images e2e-kind clean
