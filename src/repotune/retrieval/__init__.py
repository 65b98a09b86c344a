"""Retrieval over the repository beside fine-tuning: BM25 over line-window chunks of its files.

Build an index of the repository at the training revision (``RetrievalIndex.build``), save it as a
folder that travels with the model (``save``/``load``), and put the chunks that match the code before
the cursor in front of a prompt (``build_context``), in the format training uses
(``repotune.data.transforms.context_text``); ``TrainingContext`` gives training examples the same
context from an index over the training records. ``bm25s`` is imported only when an index is built or
loaded.
"""

from repotune.retrieval.chunking import Chunk, chunk_record, line_windows
from repotune.retrieval.config import INDEX_FORMAT_VERSION, RetrievalConfig
from repotune.retrieval.context import (
    TrainingContext,
    build_context,
    fit_context,
    retrieval_query,
    select_context,
)
from repotune.retrieval.index import Hit, RetrievalIndex
from repotune.retrieval.terms import STOPWORDS, code_terms

__all__ = [
    "INDEX_FORMAT_VERSION",
    "STOPWORDS",
    "Chunk",
    "Hit",
    "RetrievalConfig",
    "RetrievalIndex",
    "TrainingContext",
    "build_context",
    "chunk_record",
    "code_terms",
    "fit_context",
    "line_windows",
    "retrieval_query",
    "select_context",
]
