"""Retrieved cross-file context in front of served completions, in the format training and evaluation use.

A served model folder may carry the index of its repository (``MODEL/retrieval/``,
``repotune.retrieval.shipped``). For a text completion (plain or fill-in-the-middle) the chunks that
best match the code before the cursor (the indexed version of ``file_path`` included, unless the
index's ``current_file`` setting is false; what the prompt already shows is skipped) are rendered by
``repotune.data.transforms.context_text`` (through ``repotune.retrieval.build_context``) and go in
front of ``code_prompt`` / ``fim_prompt``, as evaluation's retrieval arms put them. The context gets
the budget the model was trained with (else the index's), never more than what the context window has
left after the prompt and ``max_tokens``.

Whether it is on: ``--retrieval on|off`` (``ServeSettings.retrieval``; ``repotune deploy`` passes the
evaluated arm's setting), else on when the model was trained with retrieved context; a request's
``"retrieval": true|false`` wins over both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retrieved:
    """The context found for one prompt."""

    context: str
    """Rendered blocks to put in front of the prompt; ``""`` when nothing fit or matched."""
    sources: tuple[str, ...] = ()
    """``PATH:FIRST-LAST`` of each block, in prompt order (most relevant last)."""


NOTHING = Retrieved("")


class ServedRetrieval:
    """The index of a served model, its context budget and whether requests use it by default."""

    def __init__(self, index: Any, folder: Path, *, budget: int, default: bool, why: str) -> None:
        self.index = index
        self.folder = folder
        self.budget = budget
        """Most tokens of context in front of a prompt."""
        self.default = default
        """Whether a request that does not say gets context."""
        self.why = why
        """Why ``default`` is what it is, for the server's start-up line."""

    @classmethod
    def load(cls, model_dir: Path, setting: bool | None) -> ServedRetrieval | None:
        """The index ``model_dir`` carries, or None when it carries none. ``setting`` is
        ``--retrieval`` (None: as the model was trained); ``True`` without an index is refused."""
        from repotune.retrieval import RetrievalIndex
        from repotune.retrieval.shipped import MODEL_INDEX_DIR, model_index, trained_settings

        folder = model_index(model_dir)
        if folder is None:
            if setting:
                raise RepotuneError(
                    f"--retrieval on: {model_dir} has no retrieval index ({MODEL_INDEX_DIR}/ beside the "
                    "weights, as the pipeline's train step puts it there)"
                )
            return None
        index = RetrievalIndex.load(folder)
        trained, trained_budget = trained_settings(model_dir)
        if setting is None:
            default = trained
            why = (
                "the model was trained with retrieved context"
                if trained
                else "off by default: the model was not trained with retrieved context (--retrieval on)"
            )
        else:
            default, why = setting, f"--retrieval {'on' if setting else 'off'}"
        budget = trained_budget or index.config.max_context_tokens
        return cls(index, folder, budget=budget, default=default, why=why)

    def context(
        self, prefix: str, suffix: str | None, path: str | None, tokenizer: Any, room: int
    ) -> Retrieved:
        """Context for completing ``prefix`` (before ``suffix``) in the file at ``path``, within
        ``min(budget, room)`` tokens; ``NOTHING`` when that leaves no room or nothing matches."""
        from repotune.retrieval.context import completion_hits, render_hits

        budget = min(self.budget, room)
        if budget <= 0 or not prefix.strip():
            return NOTHING
        hits = completion_hits(
            self.index, prefix, tokenizer=tokenizer, path=path, suffix=suffix, max_tokens=budget
        )
        if not hits:
            return NOTHING
        sources = tuple(f"{hit.path}:{hit.first_line}-{hit.last_line}" for hit in hits)
        return Retrieved(render_hits(hits, tokenizer), sources)

    def framed(
        self,
        prompt: str,
        suffix: str | None,
        path: str | None,
        tokenizer: Any,
        plain: tuple[list[int], str],
        *,
        wanted: int,
        window: int,
        frame: Callable[[str], tuple[list[int], str]],
    ) -> tuple[list[int], str, Retrieved]:
        """The ids of ``prompt`` with its context in front, the text held back from them
        (``repotune.serving.healing``) and that context: ``frame(context)`` encodes the prompt framed
        with it. The context gets what ``window`` has left after ``plain`` (the prompt encoded alone, and
        its held-back text) and the ``wanted`` new tokens, so a prompt that fits without context still
        fits with it; ``plain`` comes back where nothing is found, or where the framed prompt would not
        fit after all (the header and a tokenizer's merges at block boundaries cost a few tokens more than
        the context alone; rather than cut into the prompt, it goes without)."""
        ids, heal = plain
        found = self.context(prompt, suffix, path, tokenizer, window - len(ids) - wanted)
        if not found.context:
            return ids, heal, found
        with_context, held = frame(found.context)
        if len(with_context) + wanted > window:
            return ids, heal, NOTHING
        return with_context, held, found
