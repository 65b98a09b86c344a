"""A base model spec (alias, folder, s3:// prefix or Hub id) to the local folder that holds it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from repotune.errors import RepotuneError
from repotune.models.builtin import (
    SMOLLM2_FOLDER,
    TINY_FOLDER,
    convert_smollm2,
    make_tiny_model,
    smollm2_tokenizer,
)
from repotune.models.cache import build_once, models_cache_dir

ALIASES = ("smollm2-135m", "tiny")
ACCEPTED_FORMS = (
    "`smollm2-135m` (SmolLM2-135M-Instruct, offline), `tiny` (a tiny test model), "
    "a local folder with config.json, `s3://bucket/prefix`, or a Hugging Face Hub id such as "
    "`Qwen/Qwen2.5-Coder-0.5B`"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_base_model(spec: str, cache_dir: Path | None = None) -> Path:
    """The local folder of the base model named by ``spec`` (see ``ACCEPTED_FORMS``).

    ``cache_dir`` replaces the model cache folder (see ``models_cache_dir``).
    """
    spec = spec.strip()
    cache = models_cache_dir(cache_dir)
    if spec == "smollm2-135m":
        return build_once(cache / SMOLLM2_FOLDER, convert_smollm2)
    if spec == "tiny":
        return build_once(
            cache / TINY_FOLDER, lambda dest: make_tiny_model(dest, tokenizer=smollm2_tokenizer(cache))
        )
    if spec.startswith("s3://"):
        from repotune.models.remote import download_s3

        return download_s3(spec, cache)
    path = Path(spec).expanduser()
    if path.exists():
        return _local_folder(path)
    if _HUB_ID.match(spec):
        from repotune.models.remote import download_hub

        return download_hub(spec)
    if os.sep in spec or spec.startswith((".", "~")):
        raise RepotuneError(f"base model folder {spec} does not exist")
    raise RepotuneError(f"unknown base model {spec!r}; use {ACCEPTED_FORMS}")


def resolve_embedding_model(spec: str, cache_dir: Path | None = None) -> Path:
    """The local folder of the sentence-transformers model named by ``spec``: a folder on disk, or an
    ``s3://`` prefix copied into the model cache once. Nothing is fetched from a hub."""
    spec = spec.strip()
    if spec.startswith("s3://"):
        from repotune.models.remote import download_s3

        return download_s3(spec, models_cache_dir(cache_dir))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise RepotuneError(
            f"retrieval embedding model {spec} is not a folder; give the local folder (or an s3:// folder) "
            "of a sentence-transformers model, such as all-MiniLM-L6-v2"
        )
    return path.resolve()


def _local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise RepotuneError(f"base model {path} is not a folder; give the folder that holds config.json")
    if not (path / "config.json").is_file():
        raise RepotuneError(
            f"base model folder {path} has no config.json; is it a Hugging Face model folder?"
        )
    return path.resolve()


def has_tokenizer(folder: Path) -> bool:
    """Whether a model folder carries its tokenizer (a trained model's may have added tokens)."""
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
