# The two set-up commands: `make serve` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPOSITORY ?= model_repository
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help venv install-dev install-serve test lint pytest test-deps serve demo-model bench clean

help:
	@echo "make serve   install, build the demo model if the repository has none, serve it on http://$(HOST):$(PORT)"
	@echo "make test    install, lint (ruff, hadolint), run the test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install when pyproject.toml changes.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,train]'
	touch $@

install-dev: $(VENV)/.dev-installed
install-serve: $(VENV)/.serve-installed

test-deps: install-dev
	PIP=$(BIN)/pip scripts/fetch_tritonserver.sh .cache/pytriton
	scripts/install_chromium.sh

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

pytest: test-deps
	$(BIN)/python -m pytest

test: lint pytest

demo-model: install-serve
	$(BIN)/python -m sceneparse.demo --repository $(REPOSITORY)

serve: demo-model
	$(BIN)/sceneparse serve --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

bench: install-dev
	$(BIN)/python bench/export_latency.py
	$(BIN)/python bench/gateway.py

clean:
	rm -rf build .pytest_cache .ruff_cache
