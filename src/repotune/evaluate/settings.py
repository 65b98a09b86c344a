"""How the evaluate stage scores: sample counts, window and prompt sizes, batching and progress
(``--eval KEY=VALUE`` on the command line, the pipeline's ``evaluation`` settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from repotune.decoding import LINE_REPEAT_PENALTY, check_line_penalty
from repotune.errors import RepotuneError


@dataclass(frozen=True)
class ScoringConfig:
    seq_len: int = 256
    """Tokens per perplexity window; windows overlap by half, so a scored token has at least half of
    this as context where the file has it."""
    max_blocks: int = 64
    """Perplexity windows scored (each one bootstrap example), a seeded draw when there are more."""
    line_samples: int = 40
    """Lines cut from held-out code for line completion (in a temporal split, added lines only)."""
    fim_samples: int = 20
    """Spans cut from held-out code for fill-in-the-middle (models with FIM tokens only)."""
    commit_samples: int = 20
    """Held-out commits whose subject line is generated from the diff."""
    context_chars: int = 1500
    """Characters of the file before (and, for FIM, after) the cursor given as context."""
    max_new_tokens: int = 32
    """Tokens a completion may take to write its first non-blank line (greedy)."""
    line_repeat_penalty: float = LINE_REPEAT_PENALTY
    """Taken off a token's logit for each time the completion has written it since its last newline
    (``repotune.decoding``): what ``repotune serve`` decodes with when a request sets no penalty of
    its own. 0 scores plain greedy decoding."""
    retry_line_above: bool = True
    """Decode an answer that writes the line above the cursor again a second time, from its least
    certain token (``repotune.decoding``): what ``repotune serve`` does by default. False scores the
    first answers."""
    forgetting_files: int = 16
    """Files of general Python code (this interpreter's standard library) for the forgetting check; 0
    skips it."""
    forgetting_source: str | None = None
    """A folder of general code for the forgetting check; None uses the standard library."""
    retrieval: bool = True
    """Also score the base model and the candidate with context retrieved from the repository (from
    the training records only, or the index given to the stage)."""
    batch_size: int = 32
    """Most prompts decoded together: an arm's lines, FIM spans and commit subjects share batches, and
    prompts of very different lengths go in separate ones (``repotune.evaluate.generate.length_batches``);
    1 answers one at a time, with the same answers, slower."""
    window_batch_size: int = 8
    """Perplexity windows per forward pass; 1 scores one at a time, with the same numbers."""
    progress_seconds: float = 5.0
    """Seconds between progress lines (samples scored, time left)."""
    device: str | None = None
    """torch device to score on (`cpu`, `cuda`, `cuda:1`); None: the GPU when there is one, else the CPU."""
    seed: int = 0
    """Seed of every sample drawn."""

    def __post_init__(self) -> None:
        for name, minimum in (("seq_len", 2), ("max_blocks", 1), ("max_new_tokens", 1), ("batch_size", 1),
                              ("window_batch_size", 1), ("context_chars", 1)):  # fmt: skip
            _check_int(name, getattr(self, name), minimum)
        for name in ("line_samples", "fim_samples", "commit_samples", "forgetting_files", "seed"):
            _check_int(name, getattr(self, name), 0)
        seconds = self.progress_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or (seconds < 0)
        ):
            raise RepotuneError(
                f"progress_seconds must be a number of at least 0, got {self.progress_seconds!r}"
            )
        check_line_penalty(self.line_repeat_penalty)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RepotuneError(
            f"evaluation setting {name} must be a whole number of at least {minimum}, got {value!r}"
        )
