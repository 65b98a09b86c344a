"""A BM25 index over the chunks of a repository's files (``bm25s``), saved as one self-contained folder.

The folder is the artifact that travels: the pipeline caches it by revision, and it ships beside the
model for serving. It holds::

    manifest.json   format version, config, revision, counts (``RetrievalIndex.manifest``)
    files.jsonl     each indexed file's path and content, once ({"path": ..., "content": ...})
    chunks.npz      per chunk: file number, first and last line, start and end character offsets
    bm25/           the bm25s index (score matrix and vocabulary of search terms)

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
from repotune.retrieval.terms import code_terms

MANIFEST_NAME = "manifest.json"
FILES_NAME = "files.jsonl"
CHUNKS_NAME = "chunks.npz"
BM25_DIR = "bm25"
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
    """BM25 score (higher is more relevant); only comparable within one query."""


class RetrievalIndex:
    """BM25 over line-window chunks of code and doc files; build, save, load, search.

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
    ) -> None:
        self.config = config
        self.revision = revision
        self._paths = paths
        self._contents = contents
        self._chunk_file = chunks["files"]
        self._chunk_lines = chunks["lines"]
        self._chunk_offsets = chunks["offsets"]
        self._bm25 = bm25
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
            if log is not None and len(paths) % _PROGRESS_EVERY == 0:
                log(f"retrieval index: {len(paths):,} files, {len(corpus):,} chunks so far")

        bm25 = None
        if corpus:
            bm25 = bm25s.BM25()
            bm25.index((corpus, vocab), create_empty_token=False, show_progress=False)
        del corpus
        if revision is None and len(revisions) == 1:
            revision = next(iter(revisions))
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
        )
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
        """
        k = self.config.top_k if k is None else k
        if k < 1 or self._bm25 is None:
            return []
        vocab = self._bm25.vocab_dict
        ids = list(dict.fromkeys(vocab[term] for term in code_terms(query) if term in vocab))
        if not ids:
            return []
        scores = self._bm25.get_scores(ids)
        if exclude_path is not None:
            excluded = self._files_by_path.get(posixpath.normpath(exclude_path.replace("\\", "/")), [])
            if excluded:
                scores[np.isin(self._chunk_file, excluded)] = 0.0
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            cut = len(candidates) - k
            kth = np.partition(scores[candidates], cut)[cut]
            candidates = candidates[scores[candidates] >= kth]
        best = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
        return [self._hit(int(chunk), float(scores[chunk])) for chunk in best]

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
        if len(chunks["files"]) != manifest["chunks"] or len(paths) != manifest["files"]:
            raise RepotuneError(f"{folder}: the index files do not match its manifest; build the index again")
        return cls(config, manifest.get("revision"), paths, contents, chunks, bm25)
