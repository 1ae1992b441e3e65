# Fulcrum: `make demo` runs the main job, `make test` runs every test. Both set up from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup binaries node-packages print-node-packages demo test lint unit integration clean manifests image

$(BIN)/fulcrum: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/fulcrum binaries

binaries: $(BIN)/fulcrum
	$(BIN)/fulcrum build

# Debian's packages the real nodes need (`fulcrum cluster up --real-nodes N`, the demo's local
# rebuild): installed as root where apt-get is; elsewhere the demo says what is missing and
# shows local rebuild on kwok nodes instead.
REAL_NODE_PACKAGES := runc iptables containernetworking-plugins dnsmasq-base docker-registry busybox-static

node-packages:
	@missing=$$(for p in $(REAL_NODE_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y \
	    --no-install-recommends $$missing; \
	else echo "real nodes need: apt-get install" $$missing; fi

print-node-packages:
	@echo $(REAL_NODE_PACKAGES)

demo: setup node-packages
	$(BIN)/fulcrum demo

lint: $(BIN)/fulcrum
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(BIN)/fulcrum
	$(BIN)/pytest -q tests/unit tests/contract

integration: setup
	$(BIN)/pytest -q -m integration tests/integration

test: setup lint
	$(BIN)/pytest -q tests

# deploy/ from charts/fulcrum (helm template; tests/unit/test_chart.py fails when they differ)
manifests: $(BIN)/fulcrum
	$(BIN)/python -m fulcrum.harness.chart

# the fulcrum:VERSION image with buildah, as root; minutes, so not part of `make test`
image: $(BIN)/fulcrum
	PYTHON=$(BIN)/python deploy/image/build.sh

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
