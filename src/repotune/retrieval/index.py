"""A BM25 index over the chunks of a repository's files (``bm25s``), saved as one self-contained folder.

The folder is the artifact that travels: the pipeline caches it by revision, and it ships beside the
model for serving. It holds::

    manifest.json   format version, config, revision, counts (``RetrievalIndex.manifest``)
    files.jsonl     each indexed file's path and content, once ({"path": ..., "content": ...})
    chunks.npz      per chunk: file number, first and last line, start and end character offsets
    bm25/           the bm25s index (score matrix and vocabulary of search terms)
    embeddings.npy  with ``RetrievalConfig.embedding_model``: each chunk's unit-length embedding
    embedder/       with it: a copy of that sentence-transformers model, which embeds the queries

A chunk's text is a slice of its file's content, so overlapping windows cost no extra space.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import shutil
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repotune.atomic import umask, write_json
from repotune.errors import RepotuneError
from repotune.records import Record
from repotune.retrieval.chunking import chunk_record
from repotune.retrieval.config import INDEX_FORMAT_VERSION, RetrievalConfig
from repotune.retrieval.embedding import FUSION_DEPTH, embed, fuse, load_encoder, top
from repotune.retrieval.terms import code_terms

MANIFEST_NAME = "manifest.json"
FILES_NAME = "files.jsonl"
CHUNKS_NAME = "chunks.npz"
BM25_DIR = "bm25"
EMBEDDINGS_NAME = "embeddings.npy"
EMBEDDER_DIR = "embedder"
_PROGRESS_EVERY = 5000  # files between progress lines while building


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved chunk."""

    path: str
    first_line: int
    """1-based, inclusive."""
    last_line: int
    """1-based, inclusive."""
    text: str
    score: float
    """BM25 score, or with an embedding model the fused reciprocal-rank score (higher is more
    relevant); only comparable within one query."""


class RetrievalIndex:
    """BM25 (and, with ``config.embedding_model``, embeddings) over line-window chunks of code and doc
    files; build, save, load, search.

    Build it with ``RetrievalIndex.build(records, config)`` (records can stream from a file: they are
    not kept, only the indexed files' text), search it with ``search``, and turn hits into a prompt's
    context with ``repotune.retrieval.build_context``.
    """

    def __init__(
        self,
        config: RetrievalConfig,
        revision: str | None,
        paths: list[str],
        contents: list[str],
        chunks: dict[str, np.ndarray],
        bm25: Any | None,
        embeddings: np.ndarray | None = None,
        embedder: Path | None = None,
    ) -> None:
        self.config = config
        self.revision = revision
        self._paths = paths
        self._contents = contents
        self._chunk_file = chunks["files"]
        self._chunk_lines = chunks["lines"]
        self._chunk_offsets = chunks["offsets"]
        self._bm25 = bm25
        self._embeddings = embeddings
        self._embedder = embedder
        self._encoder: Any | None = None
        self._encoder_lock = threading.Lock()
        self._files_by_path: dict[str, list[int]] = {}
        for number, path in enumerate(paths):
            self._files_by_path.setdefault(path, []).append(number)

    def __len__(self) -> int:
        """The number of chunks."""
        return len(self._chunk_file)

    @property
    def manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` records: enough to tell whether a cached index fits a run."""
        import bm25s

        return {
            "format_version": INDEX_FORMAT_VERSION,
            "config": dataclasses.asdict(self.config),
            "revision": self.revision,
            "files": len(self._paths),
            "chunks": len(self),
            "terms": len(self._bm25.vocab_dict) if self._bm25 is not None else 0,
            "bm25s": bm25s.__version__,
            "embedding_dimension": None if self._embeddings is None else int(self._embeddings.shape[1]),
        }

    @classmethod
    def build(
        cls,
        records: Iterable[Record],
        config: RetrievalConfig | None = None,
        *,
        revision: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> RetrievalIndex:
        """Index the chunks of the code and doc records in ``records`` (other kinds are skipped).

        ``revision`` is recorded in the manifest; by default it is the records' own revision when
        they all share one.
        """
        import bm25s

        config = config or RetrievalConfig()
        started = time.perf_counter()
        vocab: dict[str, int] = {}
        corpus: list[array] = []
        paths: list[str] = []
        contents: list[str] = []
        chunk_file, chunk_lines, chunk_offsets = array("i"), array("i"), array("q")
        revisions: set[str | None] = set()
        texts: list[str] | None = [] if config.embedding_model is not None else None
        for record in records:
            chunks = list(chunk_record(record, config))
            if not chunks:
                continue
            number = len(paths)
            paths.append(record.file_path or "")
            contents.append(record.content)
            revisions.add(record.revision)
            for chunk in chunks:
                for term in set(chunk.terms).difference(vocab):
                    vocab[term] = len(vocab)
                corpus.append(array("i", map(vocab.__getitem__, chunk.terms)))
                chunk_file.append(number)
                chunk_lines.extend((chunk.first_line, chunk.last_line))
                chunk_offsets.extend((chunk.start, chunk.end))
                if texts is not None:
                    texts.append(chunk.text)
            if log is not None and len(paths) % _PROGRESS_EVERY == 0:
                log(f"retrieval index: {len(paths):,} files, {len(corpus):,} chunks so far")

        bm25 = None
        if corpus:
            bm25 = bm25s.BM25()
            bm25.index((corpus, vocab), create_empty_token=False, show_progress=False)
        del corpus
        if revision is None and len(revisions) == 1:
            revision = next(iter(revisions))
        embeddings, embedder = None, None
        if config.embedding_model is not None:
            embedder = Path(config.embedding_model).expanduser()
            encoder = load_encoder(embedder)
            if log is not None:
                log(f"retrieval index: embedding {len(texts or []):,} chunks with {embedder}")
            embeddings = embed(encoder, texts or [], log=log)
        index = cls(
            config,
            revision,
            paths,
            contents,
            {
                "files": np.frombuffer(chunk_file, dtype=np.int32).copy(),
                "lines": np.frombuffer(chunk_lines, dtype=np.int32).reshape(-1, 2).copy(),
                "offsets": np.frombuffer(chunk_offsets, dtype=np.int64).reshape(-1, 2).copy(),
            },
            bm25,
            embeddings,
            embedder,
        )
        if embeddings is not None:
            index._encoder = encoder
        if log is not None:
            log(
                f"retrieval index: {len(paths):,} files, {len(index):,} chunks, {len(vocab):,} terms "
                f"in {time.perf_counter() - started:.1f} s"
            )
        return index

    def search(self, query: str, k: int | None = None, *, exclude_path: str | None = None) -> list[Hit]:
        """The ``k`` chunks (default ``config.top_k``) that best match ``query``, best first.

        Each distinct search term of the query counts once, so a long query (a whole file) is not
        dominated by its most repeated words. Chunks of the file at ``exclude_path`` (a repository
        path, as the records have it) are left out, as are chunks that share no term with the query.
        Ties go to the chunk indexed first, so results do not depend on anything but the inputs.

        With embeddings, the BM25 ranking and the ranking of every chunk by cosine similarity to the
        query's embedding (the top ``FUSION_DEPTH`` of each) are fused by reciprocal rank, so a chunk
        that shares no term with the query can still be found.
        """
        k = self.config.top_k if k is None else k
        if k < 1 or self._bm25 is None or not query.strip():
            return []
        excluded = None
        if exclude_path is not None:
            files = self._files_by_path.get(posixpath.normpath(exclude_path.replace("\\", "/")), [])
            excluded = np.isin(self._chunk_file, files) if files else None
        vocab = self._bm25.vocab_dict
        ids = list(dict.fromkeys(vocab[term] for term in code_terms(query) if term in vocab))
        rankings: list[np.ndarray] = []
        scores = None
        if ids:
            scores = self._bm25.get_scores(ids)
            if excluded is not None:
                scores[excluded] = 0.0
            depth = k if self._embeddings is None else max(k, FUSION_DEPTH)
            rankings.append(top(scores, np.flatnonzero(scores > 0), depth))
        if self._embeddings is None:
            if scores is None:
                return []
            return [self._hit(int(chunk), float(scores[chunk])) for chunk in rankings[0]]
        similarity = self._embeddings @ self._embed_query(query)
        allowed = np.flatnonzero(~excluded) if excluded is not None else np.arange(len(self))
        rankings.append(top(similarity, allowed, max(k, FUSION_DEPTH)))
        best, fused = fuse(rankings, k)
        return [self._hit(int(chunk), float(score)) for chunk, score in zip(best, fused, strict=True)]

    def _embed_query(self, query: str) -> np.ndarray:
        with self._encoder_lock:  # serving searches from several threads; load the model once
            if self._encoder is None:
                self._encoder = load_encoder(self._embedder) if self._embedder is not None else None
            if self._encoder is None:
                raise RepotuneError("this index has embeddings but no model to embed a query with")
            return embed(self._encoder, [query])[0]

    def _hit(self, chunk: int, score: float) -> Hit:
        file = int(self._chunk_file[chunk])
        first, last = (int(n) for n in self._chunk_lines[chunk])
        start, end = (int(n) for n in self._chunk_offsets[chunk])
        return Hit(self._paths[file], first, last, self._contents[file][start:end], score)

    def save(self, folder: Path) -> None:
        """Write the index to ``folder``, replacing what is there; the folder is complete or absent."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; outputs get the usual permissions
            with (tmp / FILES_NAME).open("w", encoding="utf-8") as handle:
                for path, content in zip(self._paths, self._contents, strict=True):
                    handle.write(json.dumps({"path": path, "content": content}, ensure_ascii=False))
                    handle.write("\n")
            np.savez(
                tmp / CHUNKS_NAME,
                files=self._chunk_file,
                lines=self._chunk_lines,
                offsets=self._chunk_offsets,
            )
            if self._bm25 is not None:
                self._bm25.save(tmp / BM25_DIR, show_progress=False)
            if self._embeddings is not None and self._embedder is not None:
                np.save(tmp / EMBEDDINGS_NAME, self._embeddings)
                shutil.copytree(self._embedder, tmp / EMBEDDER_DIR)
            write_json(tmp / MANIFEST_NAME, self.manifest)  # last: its presence marks a whole index
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
            raise

    @classmethod
    def load(cls, folder: Path) -> RetrievalIndex:
        """An index saved by ``save``; refuses a folder that is not one, or one of another format."""
        import bm25s

        folder = Path(folder)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise RepotuneError(f"{folder} is not a retrieval index (no {MANIFEST_NAME})")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != INDEX_FORMAT_VERSION:
            raise RepotuneError(
                f"{folder} is a retrieval index of format {manifest.get('format_version')!r}; this repotune "
                f"reads format {INDEX_FORMAT_VERSION}: build the index again"
            )
        config_data = manifest["config"]
        config = RetrievalConfig(**{**config_data, "kinds": tuple(config_data["kinds"])})
        paths: list[str] = []
        contents: list[str] = []
        with (folder / FILES_NAME).open(encoding="utf-8") as handle:
            for line in handle:
                entry = json.loads(line)
                paths.append(entry["path"])
                contents.append(entry["content"])
        with np.load(folder / CHUNKS_NAME) as saved:
            chunks = {name: saved[name] for name in ("files", "lines", "offsets")}
        bm25 = bm25s.BM25.load(folder / BM25_DIR, show_progress=False) if len(chunks["files"]) else None
        embeddings, embedder = None, None
        if config.embedding_model is not None:
            if not (folder / EMBEDDINGS_NAME).is_file() or not (folder / EMBEDDER_DIR).is_dir():
                raise RepotuneError(
                    f"{folder}: an embedding index without {EMBEDDINGS_NAME} or {EMBEDDER_DIR}/; "
                    "build it again"
                )
            embeddings, embedder = np.load(folder / EMBEDDINGS_NAME), folder / EMBEDDER_DIR
        if (
            len(chunks["files"]) != manifest["chunks"]
            or len(paths) != manifest["files"]
            or (embeddings is not None and len(embeddings) != manifest["chunks"])
        ):
            raise RepotuneError(f"{folder}: the index files do not match its manifest; build the index again")
        return cls(config, manifest.get("revision"), paths, contents, chunks, bm25, embeddings, embedder)
