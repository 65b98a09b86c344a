"""Retrieved chunks become the cross-file context in front of a prompt or a training example.

The query is the code just before the cursor (``retrieval_query``); the chunks that best match it
are rendered with ``repotune.data.transforms.context_text`` within a token budget, most relevant
last. Evaluation and serving call ``build_context``, which also searches the indexed version of the
file being completed (``RetrievalConfig.current_file``); training calls ``TrainingContext``, an index
over the training records only, which never searches an example's own file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from repotune.data.transforms import context_text, encode
from repotune.errors import RepotuneError
from repotune.records import Kind, Record
from repotune.retrieval.config import RetrievalConfig
from repotune.retrieval.index import Hit, RetrievalIndex


def retrieval_query(prefix: str, suffix: str | None, config: RetrievalConfig) -> str:
    """The last ``config.query_lines`` lines of ``prefix`` (the cursor's own line, however partial,
    included), then the first ``config.suffix_query_lines`` lines of ``suffix``."""
    query = "".join(prefix.splitlines(keepends=True)[-config.query_lines :])
    if suffix and config.suffix_query_lines:
        query += "".join(suffix.splitlines(keepends=True)[: config.suffix_query_lines])
    return query


def token_count(text: str, tokenizer: Any) -> int:
    """Tokens of ``text`` as training and prompts tokenize it: no special tokens added."""
    return len(encode(tokenizer, text)) if text else 0


def fit_context(hits: Sequence[Hit], tokenizer: Any, max_tokens: int, *, seen: str = "") -> list[Hit]:
    """The hits that make up the context, in prompt order (most relevant last), within ``max_tokens``.

    ``hits`` come best first (as ``RetrievalIndex.search`` gives them); each is taken if it still fits
    in the budget, so a long chunk is skipped for shorter, less relevant ones. A hit whose text is
    already in ``seen`` (the prompt's own code) adds nothing and is skipped, as is one that overlaps a
    better hit of the same file (neighbouring windows share lines).
    """
    chosen: list[Hit] = []
    used = 0
    for hit in hits:
        if hit.text.strip() in seen or any(_overlaps(hit, other) for other in chosen):
            continue
        cost = token_count(context_text([(hit.path, hit.text)], tokenizer), tokenizer)
        if used + cost <= max_tokens:
            chosen.append(hit)
            used += cost
    ordered = chosen[::-1]
    # Block counts add up to the whole (each block starts with a header), but a tokenizer may merge
    # across a boundary; the whole is what must fit, so drop the least relevant until it does.
    while ordered and token_count(render_hits(ordered, tokenizer), tokenizer) > max_tokens:
        ordered.pop(0)
    return ordered


def select_context(
    index: RetrievalIndex,
    query: str,
    *,
    tokenizer: Any,
    exclude_path: str | None = None,
    seen: str = "",
    max_tokens: int | None = None,
    top_k: int | None = None,
) -> list[Hit]:
    """Search ``index`` for ``query`` and keep what fits (``fit_context``); prompt order, best last.

    ``max_tokens`` and ``top_k`` default to the index's config.
    """
    hits = index.search(query, top_k, exclude_path=exclude_path)
    budget = index.config.max_context_tokens if max_tokens is None else max_tokens
    return fit_context(hits, tokenizer, budget, seen=seen)


def completion_hits(
    index: RetrievalIndex,
    prefix: str,
    *,
    tokenizer: Any,
    path: str | None = None,
    suffix: str | None = None,
    max_tokens: int | None = None,
    top_k: int | None = None,
) -> list[Hit]:
    """The chunks ``build_context`` renders, in prompt order (best last): serving reports where they
    came from. The file at ``path`` is searched too where ``index.config.current_file`` says so."""
    return select_context(
        index,
        retrieval_query(prefix, suffix, index.config),
        tokenizer=tokenizer,
        exclude_path=None if index.config.current_file else path,
        seen=prefix + (suffix or ""),
        max_tokens=max_tokens,
        top_k=top_k,
    )


def build_context(
    index: RetrievalIndex,
    prefix: str,
    *,
    tokenizer: Any,
    path: str | None = None,
    suffix: str | None = None,
    max_tokens: int | None = None,
    top_k: int | None = None,
) -> str:
    """The cross-file context for completing the file at ``path`` after ``prefix`` (before ``suffix``).

    It goes in front of ``code_prompt(prefix, path=path, tokenizer=tokenizer)`` or ``fim_prompt``
    (their ``context=`` argument). Chunks of ``path`` itself are searched where the index's config
    says so (``current_file``, the default: a chunk the prompt already shows is skipped), else left
    out. ``""`` when nothing relevant is found.
    """
    hits = completion_hits(
        index, prefix, tokenizer=tokenizer, path=path, suffix=suffix, max_tokens=max_tokens, top_k=top_k
    )
    return render_hits(hits, tokenizer)


class TrainingContext:
    """Retrieved context for training examples (a ``repotune.data.transforms.ContextFn``).

    The index holds the records given here and nothing else: give it the training records only, and no
    held-out text can reach a training example through its context. A share ``rate`` of the code
    records (drawn per record from ``seed`` and its id) get context: a FIM example is queried with the
    code before its middle (as at inference), a whole-file example with the whole file (the model
    writes all of it; DeepSeek-Coder and StarCoder2 likewise put related files in front of a file).
    """

    def __init__(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        *,
        rate: float,
        seed: int,
        config: RetrievalConfig | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise RepotuneError(f"retrieval_rate must be a number from 0 to 1, got {rate!r}")
        self.index = RetrievalIndex.build(records, config, log=log)
        self.tokenizer = tokenizer
        self.rate = rate
        self.seed = seed

    def chosen(self, record: Record) -> bool:
        """Whether ``record`` gets context; its own random stream, apart from the example's draws."""
        if record.kind is not Kind.CODE or record.file_path is None:
            return False
        return random.Random(f"{self.seed}:retrieval:{record.id}").random() < self.rate

    def __call__(self, record: Record, prefix: str | None, suffix: str | None) -> str:
        if not self.chosen(record):
            return ""
        if prefix is None:
            query, seen = record.content, record.content
        else:
            query, seen = retrieval_query(prefix, suffix, self.index.config), prefix + (suffix or "")
        hits = select_context(
            self.index, query, tokenizer=self.tokenizer, exclude_path=record.file_path, seen=seen
        )
        return render_hits(hits, self.tokenizer)


def _overlaps(a: Hit, b: Hit) -> bool:
    return a.path == b.path and a.first_line <= b.last_line and b.first_line <= a.last_line


def render_hits(hits: Sequence[Hit], tokenizer: Any) -> str:
    """``hits`` as a prompt's context (``context_text``), in the order given."""
    return context_text([(hit.path, hit.text) for hit in hits], tokenizer)
