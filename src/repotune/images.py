"""Container images, named in one place and pinned by tag (set a digest here for production).

Every KFP component, the PyTorchJob, the ServingRuntime and the manifests take their image from here;
`REPOTUNE_IMAGE` / `REPOTUNE_CUDA_IMAGE` override them for a private registry. The images are built
from `Dockerfile` (CPU) and `Dockerfile.cuda` at the repository root.
"""

from __future__ import annotations

import os

from repotune import __version__

REGISTRY = "ghcr.io/repotune"
CPU_IMAGE = f"{REGISTRY}/repotune:{__version__}"
"""The component image: Python, the CPU build of torch and this package."""
CUDA_IMAGE = f"{REGISTRY}/repotune-cuda:{__version__}"
"""The same with a CUDA build of torch, for train steps that ask for accelerators."""
HF_RUNTIME = "kserve-huggingfaceserver"
"""KServe's Hugging Face (vLLM) ServingRuntime, the default deploy target on GPU clusters."""


def cpu_image() -> str:
    return os.environ.get("REPOTUNE_IMAGE") or CPU_IMAGE


def cuda_image() -> str:
    return os.environ.get("REPOTUNE_CUDA_IMAGE") or CUDA_IMAGE
