"""The settings of a retrieval index and of the context it puts in front of a prompt."""

from __future__ import annotations

from dataclasses import dataclass

from repotune.errors import RepotuneError
from repotune.records import Kind

# Bump when chunking, term extraction or the saved layout changes: an index saved with another version
# is refused on load, and token caches of retrieval-augmented training examples are not reused.
INDEX_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RetrievalConfig:
    """How files become retrieval chunks, and how retrieved chunks become a prompt's context.

    The defaults follow RepoCoder and CrossCodeEval: windows of 20 lines sliding by 10, the query the
    20 lines before the cursor, a handful of chunks. Training, evaluation and serving should use one
    config, so the model is trained on the context it is later given.
    """

    window_lines: int = 20
    """Lines per chunk (the last chunk of a file may be shorter)."""
    stride_lines: int = 10
    """Lines between the first lines of consecutive chunks of a file, 1 to window_lines; below
    window_lines the chunks overlap, so a definition is whole in at least one of them."""
    min_chunk_terms: int = 3
    """Chunks with fewer search terms than this (blank lines, closing brackets) are not indexed."""
    kinds: tuple[str, ...] = ("code", "doc")
    """Record kinds that are indexed: `code`, `doc` (records with a file path)."""
    query_lines: int = 20
    """Lines of the code before the cursor that form the query."""
    suffix_query_lines: int = 0
    """Lines of the code after the cursor (a FIM suffix) added to the query; 0 queries with the code
    before the cursor only, as RepoCoder and CrossCodeEval do."""
    top_k: int = 4
    """Chunks retrieved per query; fewer reach the prompt when the budget runs out."""
    max_context_tokens: int = 512
    """Budget for the retrieved context in front of a prompt, in tokens of the model's tokenizer."""
    current_file: bool = True
    """Whether a search for a completion also looks in the indexed version of the file being completed
    (its chunks not already in the prompt: what lies above the prompt's window and below the cursor).
    The editor shows a model only the code near the cursor; the rest of the same file is the likeliest
    place for the names the next line uses. Training never searches an example's own file (that would
    be its answer). False: other files only, as CrossCodeEval's cross-file context."""
    embedding_model: str | None = None
    """A local folder of a sentence-transformers model (all-MiniLM-L6-v2, a code embedding model): the
    index also embeds every chunk, ships a copy of the model, and a search fuses the BM25 ranking with
    the ranking by cosine similarity (reciprocal rank fusion), so a query that shares no word with the
    code it needs can still find it. None: BM25 alone. Needs ``pip install 'repotune[embeddings]'``."""

    def __post_init__(self) -> None:
        for name in ("window_lines", "stride_lines", "min_chunk_terms", "query_lines", "top_k"):
            _check_int(name, getattr(self, name), 1)
        _check_int("suffix_query_lines", self.suffix_query_lines, 0)
        _check_int("max_context_tokens", self.max_context_tokens, 1)
        if not isinstance(self.current_file, bool):
            raise RepotuneError(f"retrieval.current_file must be true or false, got {self.current_file!r}")
        if self.stride_lines > self.window_lines:
            raise RepotuneError(
                f"retrieval.stride_lines ({self.stride_lines}) must not exceed retrieval.window_lines "
                f"({self.window_lines}): lines between windows would never be indexed"
            )
        if self.embedding_model is not None and (
            not isinstance(self.embedding_model, str) or not self.embedding_model.strip()
        ):
            raise RepotuneError(
                f"retrieval.embedding_model must be the folder of a sentence-transformers model or null, "
                f"got {self.embedding_model!r}"
            )
        allowed = {str(Kind.CODE), str(Kind.DOC)}
        if not self.kinds or any(kind not in allowed for kind in self.kinds):
            choices = ", ".join(sorted(allowed))
            raise RepotuneError(f"retrieval.kinds must name one or more of {choices}, got {list(self.kinds)}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RepotuneError(f"retrieval.{name} must be a whole number of at least {minimum}, got {value!r}")
