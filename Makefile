# `make demo` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_SOURCE ?= .
DEMO_DIR ?= .demo

.PHONY: demo test lint clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Until training lands, the demo is the data half: ingest this repository (files and history),
# clean it, and print the report.
demo: $(STAMP)
	$(BIN)/repotune ingest $(DEMO_SOURCE) -o $(DEMO_DIR)/ingest
	$(BIN)/repotune clean $(DEMO_DIR)/ingest -o $(DEMO_DIR)/clean
	@cat $(DEMO_DIR)/clean/report.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -m 'unit or integration or slow'

clean-demo:
	rm -rf $(DEMO_DIR)
