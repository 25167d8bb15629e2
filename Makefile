# Shoal's developer entry points. `make up` and `make test` work on a fresh machine.
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: help setup up down images cluster-up cluster-down test test-e2e test-fast lint typecheck crds check-generated bench-router bench-operator bench-serving bench-peer bench-tenants bench-tenant-keys

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## install everything (venv, Debian packages, Go-built control plane)
	@hack/setup.sh

up: ## run the quickstart fleet locally on CPU (no cluster needed, so no control-plane build)
	@hack/setup.sh --no-control-plane
	$(VENV)/bin/shoal up -f examples/quickstart.yaml

down: ## stop the local fleet
	$(VENV)/bin/shoal down

cluster-up: ## a real single-node Kubernetes cluster here (containerd, kubelet), KubeRay and Shoal (root)
	@hack/cluster-up.sh

cluster-down: ## remove the cluster-up node and everything it created
	@hack/cluster-down.sh

images: ## build the operator, serving and KubeRay images (docker or buildah); prints the archives
	@hack/build-images.sh

test: setup ## run the whole test suite against real servers
	SHOAL_REQUIRE_SERVERS=1 $(PY) -m pytest

test-e2e: setup ## the end-to-end tier on the real node (cluster-up's cluster, started if need be)
	SHOAL_REQUIRE_SERVERS=1 $(PY) -m pytest tests/e2e -m e2e

test-fast: ## unit tests only (no servers)
	$(PY) -m pytest tests/unit

lint: ## ruff, mypy and the import-layer contract
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

crds: ## regenerate CRDs from the API models
	$(VENV)/bin/shoal crds

bench-router: setup ## routing speed and artifact size
	$(PY) bench/bench_router.py

bench-operator: setup ## apply-to-RayService latency, 100/300/1,000-fleet convergence, steady writes
	$(PY) bench/bench_operator.py

bench-tenants: setup ## a tenant's limits across two ingress replicas (shared usage store vs per-replica share); the gate's CPU
	$(PY) bench/bench_tenants.py

bench-tenant-keys: setup ## a new tenant's and a rotated key's time to the fleet; Secret reads at rest
	$(PY) bench/bench_tenant_keys.py

bench-serving: setup ## latency the fleet endpoint adds over direct engine calls
	$(PY) bench/bench_serving.py

bench-peer: setup ## the fleet against Ray Serve LLM's own OpenAI app on the same vLLM models (B/A ratios)
	$(PY) bench/bench_peer.py
