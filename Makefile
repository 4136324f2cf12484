# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test files run on this many workers at once, each file whole on one worker (its module
# fixtures, a control plane, set up once). 0: in this process, one after another.
TEST_WORKERS ?= 2
DEV_ARGS ?=

.PHONY: install serve dev lint fmt test test-fast wheel-check controlplane dataplane-packages image-packages image bench bench-apiserver bench-dataplane bench-soak bench-reconciler bench-domains clean

$(VENV)/.installed: pyproject.toml devkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' -e ./devkit  # the product, and the dev kit (dev, tests)
	touch $@

install: $(VENV)/.installed

## serve: the HTTPS admission server on :9443, certificates generated into certs/
serve: install
	$(PY) -m webhook serve

## dev: a local playground: real kube-apiserver + etcd + the webhook (Ctrl-C stops all); DEV_ARGS=--dataplane: policies enforced on packets (root; make dataplane-packages)
dev: install controlplane
	$(PY) -m webhook dev $(DEV_ARGS)

## controlplane: build kube-apiserver, kube-controller-manager, kubectl, etcd, every pinned agent-sandbox controller, kube-router, helm and the pinned CRDs of prometheus-operator and network-policy-api (cached by version)
controlplane:
	tests/controlplane/build.sh >/dev/null
	for version in $$(sed -n 's/^AGENT_SANDBOX_VERSIONS=//p' devkit/agentcube_netpol_dev/versions.env | tr ',' ' '); do \
		tests/controlplane/build-agent-sandbox.sh $$version >/dev/null || exit 1; \
	done
	tests/controlplane/build-kube-router.sh >/dev/null
	tests/controlplane/build-helm.sh >/dev/null
	tests/controlplane/build-prometheus-crds.sh >/dev/null
	tests/controlplane/build-network-policy-api-crds.sh >/dev/null

## dataplane-packages: iptables and ipset (Debian packages) for kube-router in the dataplane tier, when missing
dataplane-packages:
	@if ! command -v iptables >/dev/null || ! command -v ipset >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables ipset; \
	fi

## image-packages: buildah, mmdebstrap, podman and runc (Debian packages), when missing: the image tier builds the Dockerfile and runs it
image-packages:
	@if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v podman >/dev/null || ! command -v runc >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap podman runc uidmap fuse-overlayfs >/dev/null; \
	fi

## lint: ruff, mypy, and the layering contracts of pyproject.toml [tool.importlinter]
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## test-fast: unit and HTTP tiers only (no control plane)
test-fast: install
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

## wheel-check: the wheel, installed (not editable) in a fresh venv, run outside the checkout
wheel-check: controlplane
	PYTHON=$(PYTHON) tests/wheel/check.sh

## test: lint, types, the installed wheel, and every tier, end-to-end against a real kube-apiserver included
test: lint controlplane dataplane-packages image-packages wheel-check
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## image: build the image from the Dockerfile with buildah on a stand-in base (cached by its inputs); prints its size and what takes the space
image: install image-packages
	$(PY) -m agentcube_netpol_dev.image build

bench: install
	$(PY) bench/admission.py

## bench-apiserver: what our webhooks add to claim and pod requests through kube-apiserver, at 50 and 200 req/s (~7 min)
bench-apiserver: install controlplane
	$(PY) bench/apiserver.py $(BENCH_ARGS)

## bench-dataplane: kube-router programming a new sandbox pod with 10, 100 and 1,000 sandbox policies in its namespace (root; ~6 min)
bench-dataplane: install controlplane dataplane-packages
	$(PY) bench/dataplane.py $(BENCH_ARGS)

## bench-soak: the soak of tests/e2e/test_soak.py for 10 minutes (40 s in make test), its figures printed
bench-soak: install controlplane
	AGENTCUBE_NETPOL_SOAK_SECONDS=$${AGENTCUBE_NETPOL_SOAK_SECONDS:-600} $(PY) -m pytest -p no:cacheprovider -s -q tests/e2e/test_soak.py

## bench-reconciler: burst, latency, memory, warm path and egress domains of `run` against a real API server (~27 min)
bench-reconciler: install controlplane
	$(PY) bench/reconciler.py all $(BENCH_ARGS)

## bench-domains: egress by domain name: 1,000 sandboxes share a name whose address rotates 5 times; writes and seconds a rotation against rewriting every sandbox's policy (~2 min)
bench-domains: install controlplane
	$(PY) bench/reconciler.py domains $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
