"""`repotune index`: the retrieval index of a clean folder, outside the pipeline.

The pipeline's ``retrieval-index`` step builds the same index (``build_for_dataset``) with the
recipe's settings. By hand it serves three ends: an index for ``repotune evaluate --index`` built once
and reused across evaluations; an index written into a model folder (``MODEL/retrieval``), where
``repotune serve`` finds it, so that a base model can be served with retrieval and no fine-tuning
(the arm a team already has); and an index with an embedding model tried before a recipe names it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repotune.retrieval.config import RetrievalConfig
from repotune.retrieval.index import RetrievalIndex


@dataclass(frozen=True)
class IndexConfig:
    """What `repotune index` builds, and from what."""

    data: Path
    """Folder written by `repotune clean`: its train.jsonl is indexed (the repository at the training
    revision, without what evaluation holds out)."""
    output: Path
    """Folder for the index, replaced if it holds one; MODEL/retrieval puts it where `repotune serve`
    finds it."""
    recipe: str | None = None
    """Recipe whose index settings to follow (its data.retrieval_embedding_model), so that the index is
    the one its training and evaluation use; default: BM25 alone."""
    embedding_model: str | None = None
    """Folder (local or s3://) of a sentence-transformers model to embed the chunks with, beside BM25;
    wins over the recipe's."""
    revision: str | None = None
    """Revision recorded in the index's manifest (default: the records' own, when they share one)."""


@dataclass(frozen=True)
class IndexResult:
    """The index `repotune index` wrote."""

    output: Path
    chunks: int
    files: int
    revision: str | None
    embedding_dimension: int | None
    seconds: float


def retrieval_config(recipe: str | None, overrides: dict | None = None) -> RetrievalConfig:
    """The index settings of ``recipe`` (a shipped name, a .yaml path or YAML text; None: the default
    recipe) with ``overrides`` (``{"data.retrieval_embedding_model": FOLDER}``) applied, as the
    pipeline's index step resolves them."""
    from repotune.config import to_dict
    from repotune.retrieval.shipped import index_config
    from repotune.train import resolve_recipe

    return index_config(to_dict(resolve_recipe(recipe, overrides)[0]))


def run(config: IndexConfig, log: Callable[[str], None] = print) -> IndexResult:
    """Build the index of ``config.data``'s training records and save it to ``config.output``."""
    from repotune.retrieval.shipped import build_for_dataset

    started = time.perf_counter()
    chosen = config.embedding_model
    settings = retrieval_config(config.recipe, {"data.retrieval_embedding_model": chosen} if chosen else None)
    index: RetrievalIndex = build_for_dataset(
        Path(config.data), Path(config.output), config.revision, log=log, config=settings
    )
    manifest = index.manifest
    return IndexResult(
        output=Path(config.output),
        chunks=len(index),
        files=manifest["files"],
        revision=index.revision,
        embedding_dimension=manifest["embedding_dimension"],
        seconds=time.perf_counter() - started,
    )
