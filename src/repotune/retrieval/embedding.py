"""Dense retrieval beside BM25: chunks embedded by a local sentence-transformers model, and the two
rankings fused.

The model is the user's (``RetrievalConfig.embedding_model``: a folder on disk, since nothing here
fetches from a hub); the index ships a copy of it, so serving embeds its queries with the model that
embedded the chunks. Rankings are fused by reciprocal rank fusion (Cormack, Clarke and Buettcher,
SIGIR 2009): each chunk scores ``sum(1 / (RRF_K + rank))`` over the rankings it appears in, which
needs no calibration between BM25 scores and cosine similarities.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repotune.errors import RepotuneError

RRF_K = 60
"""The fusion constant of Cormack et al.; it damps the weight of the very first ranks."""
FUSION_DEPTH = 100
"""Chunks taken from each ranking into the fusion (at least ``top_k``)."""
_BATCH = 32
_PROGRESS_SECONDS = 10.0


def load_encoder(folder: str | Path) -> Any:
    """The sentence-transformers model in ``folder``, on the CPU or the GPU there is, offline."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise RepotuneError(
            f"retrieval embedding model {folder} is not a model folder (no config.json or modules.json); "
            "give the local folder of a sentence-transformers model"
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise RepotuneError(
            "an embedding index needs sentence-transformers: pip install 'repotune[embeddings]'"
        ) from error
    return SentenceTransformer(str(folder), local_files_only=True)


def embed(encoder: Any, texts: Sequence[str], *, log: Callable[[str], None] | None = None) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, one row each, with progress every few seconds."""
    # sentence-transformers 6 renamed get_sentence_embedding_dimension
    dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    dimension = dimension()
    rows = np.zeros((len(texts), dimension), dtype=np.float32)
    started = last = time.perf_counter()
    for start in range(0, len(texts), _BATCH):
        batch = list(texts[start : start + _BATCH])
        rows[start : start + len(batch)] = encoder.encode(
            batch,
            batch_size=_BATCH,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        now = time.perf_counter()
        done = start + len(batch)
        if log is not None and now - last >= _PROGRESS_SECONDS and done < len(texts):
            left = (now - started) / done * (len(texts) - done)
            log(f"retrieval index: embedded {done:,}/{len(texts):,} chunks, about {left:.0f} s left")
            last = now
    return rows


def fuse(rankings: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` chunks with the highest reciprocal-rank-fusion score over ``rankings`` (chunk numbers,
    best first), and their scores; ties go to the lower chunk number, so results depend on the inputs
    alone."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk in enumerate(ranking.tolist(), start=1):
            fused[chunk] = fused.get(chunk, 0.0) + 1.0 / (RRF_K + rank)
    order = sorted(fused, key=lambda chunk: (-fused[chunk], chunk))[:k]
    return np.array(order, dtype=np.int64), np.array([fused[chunk] for chunk in order])


def top(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``candidates`` (chunk numbers) with the highest ``scores``, best first; ties go to
    the lower chunk number."""
    if len(candidates) > k:
        cut = len(candidates) - k
        kth = np.partition(scores[candidates], cut)[cut]
        candidates = candidates[scores[candidates] >= kth]
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]
