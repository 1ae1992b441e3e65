# Fulcrum: `make demo` runs the main job, `make test` runs every test. Both set up from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup binaries demo test lint unit integration clean manifests image

$(BIN)/fulcrum: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/fulcrum binaries

binaries: $(BIN)/fulcrum
	$(BIN)/fulcrum build

demo: setup
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
