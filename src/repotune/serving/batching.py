"""Queued, batched generation: requests that wait together share one ``model.generate``.

A decoding step costs nearly the same for one row as for sixteen (it is bound by reading the weights,
not by arithmetic), so running the waiting requests as one left-padded batch multiplies throughput
under load, where serving them one by one would make the sixteenth client wait for fifteen others.

One worker thread owns the model. ``Batcher.submit_all`` puts a request's rows in a bounded queue, all
of them or none, and returns their ``Handle`` objects at once; the worker takes the oldest row, waits a
few milliseconds for others to arrive, and runs every waiting row with the same sampling settings (up
to ``max_batch_size``) in one ``generate`` call. Each row stops on its own (end of sequence, a stop
string, its own ``max_new_tokens``, cancellation or its deadline) through a per-row stopping
criterion, which also streams each row's new text to its handle as the tokens come. The event loop
only awaits handles, so it never blocks on generation.

A running batch takes no new rows, so a request that arrives while it runs would wait for its longest
row: a tab completion behind a 500-token chat answer. A batch that others wait behind gives way after
``turn_tokens`` tokens (once every row has written the whitespace it holds back): its unfinished rows go
to the back of the queue and take their turn again later, each with the tokens it wrote so far fed back
as prompt (a greedy row writes what it would have written in one go; what a row already streamed
stays sent). A row that resumes finds its keys and values kept (below) and reads one token.

Prompts are read (the prefill) after what the prefix cache kept of them (``repotune.kvcache``): the
last sequences served, prompt and answer, one for each row a batch holds, so that an editor asking
again about the file it asked about reads only what was typed since. On a CPU, where reading padding
costs as much as reading text, a batch's rows read their prompts one by one and are decoded together
(``Batcher._start_cache``) wherever that costs less than the passes it adds (``PASS_TOKENS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from repotune.decoding import (
    LinePenaltyProcessor,
    answer_span,
    chosen_logprobs,
    decoded_ends,
    least_certain,
    line_confidence,
    newline_tokens,
    rewrites_line_above,
    runner_up,
    span_steps,
    suppressed_token_ids,
)
from repotune.kvcache import (
    PrefixCache,
    cache_argument,
    last_logit_only,
    left_padded,
    plain_cache,
    row_cache,
    with_room,
)
from repotune.serving.errors import QueueFull, ServingError, Timeout, Unavailable
from repotune.serving.healing import HealingProcessor, TokenTexts, agreed

log = logging.getLogger(__name__)

# Exposed on KServe's /metrics (prometheus_client's default registry).
BATCHES = Counter("repotune_generate_batches", "generate() calls, each serving one batch", ["model_name"])
ROWS = Counter("repotune_generate_requests", "requests (rows) generated, over all batches", ["model_name"])
TOKENS = Counter("repotune_generated_tokens", "tokens generated, over all requests", ["model_name"])
REJECTED = Counter(
    "repotune_rejected_requests", "requests refused or stopped early", ["model_name", "reason"]
)
QUEUED = Gauge("repotune_queued_requests", "requests waiting for a batch", ["model_name"])
PREFIX_TOKENS = Counter(
    "repotune_prefix_cache_tokens",
    "prompt tokens whose keys and values were reused, not read again",
    ["model_name"],
)
LINE_ABOVE = Counter(
    "repotune_line_above_retries",
    "greedy completions whose first line wrote the line above again, decoded again from their least certain "
    "tokens: replaced (by another line) or kept (every line decoded again was blank or a copy too)",
    ["model_name", "outcome"],
)
BATCH_SIZE = Histogram(
    "repotune_batch_size", "rows per generate() call", ["model_name"], buckets=(1, 2, 4, 8, 16, 32, 64)
)


PASS_TOKENS = 32
"""What a forward pass costs on a CPU beyond the tokens it reads, in tokens read: reading the weights
once. SmolLM2-135M on 2 cores: a pass over a few tokens takes about 60 ms, each prompt token about
1.7 ms more. A batch's prompts are read one by one only where that saves more than their passes cost
(``Batcher._cheaper_alone``): 16 prompts of about ten tokens read together took 2.2 s against 3.3 s
alone; 16 of 88 to 778 tokens, 35.8 s together against 18.5 s alone (``benchmarks/serve_prefill.py``)."""

# Dividing logits by a temperature this small overflows them to infinities, and sampling from the
# resulting NaNs fails; it is greedy decoding in all but name (vLLM draws the same line, at 1e-5).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; requests batch together only when these agree."""

    temperature: float = 1.0
    """Softmax temperature; 0 (or below ``GREEDY_BELOW``) means greedy decoding (always the most likely
    token)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest token set whose probability adds up to this (0 to 1]."""
    seed: int | None = None
    """Seeds the sampler for the batch (best effort: rows sampled in one batch share the generator)."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from the logit of every token the completion has already written (the
    prompt's tokens do not count). Applied row by row, so it does not split batches."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once for each time the completion has written it."""
    line_penalty: float = 0.0
    """The line repeat penalty (``repotune.decoding``): like ``frequency_penalty``, but the counts start
    again after each newline. The server's default for a request that sets neither OpenAI penalty."""

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def batch_key(self) -> tuple[Any, ...]:
        # Greedy rows ignore top_p and the seed, so all greedy requests can share a batch.
        return ("greedy",) if self.greedy else (self.temperature, self.top_p, self.seed)


@dataclass
class GenerationRequest:
    """One row to generate: the prompt's token ids and where to stop."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    """Strings that end the completion; the text is cut before the first one found."""
    timeout_s: float | None = None
    """Seconds from submission (queue wait included) after which the row is stopped and failed."""
    heal: str = ""
    """Text held back from the end of the prompt (its trailing whitespace, ``repotune.serving.healing``):
    the first tokens generated must write it, and the completion is what comes after it."""
    line_above: str = ""
    """The code above the cursor, for a greedy completion: a first line that writes its last line again
    is decoded again from its least certain tokens, one after another (``repotune.decoding``), and the
    first line is held back from the stream until it is judged. Empty: never."""
    min_confidence: float = 0.0
    """For a greedy completion: it ends before its first line whose confidence (the geometric mean of
    its tokens' probabilities, ``repotune.decoding.line_confidence``) is below this, so an editor shows
    only lines the model was sure of, or nothing; each line is held back from the stream until it is
    whole and judged. 0: never."""
    logprobs: int | None = None
    """OpenAI's ``logprobs``: record the log probability of each token written and the ``logprobs``
    most likely tokens of each step (``Completed.logprobs``). None: nothing is recorded."""
    prompt_logprobs: bool = False
    """With ``logprobs``, score the prompt's tokens too (OpenAI's ``echo``): a forward pass over it."""


@dataclass(frozen=True)
class TokenLogprob:
    """One token as OpenAI's ``logprobs`` returns it."""

    text: str
    """What the token writes of the returned text (part of it where the text starts or is cut inside
    the token); a special token's own spelling where it writes nothing (the end of sequence)."""
    logprob: float | None
    """Its log probability, of the scores it was chosen from (after the line repeat and OpenAI's
    penalties, before the temperature); None for a prompt's first token, which nothing predicts."""
    top: tuple[tuple[str, float], ...] | None
    """The most likely tokens of that step and their log probabilities, the likeliest first."""


@dataclass(frozen=True)
class Piece:
    """A streamed piece of a row's text with the tokens it completes, for a row that records its steps
    (``GenerationRequest.logprobs``); a row that does not streams plain text."""

    text: str
    logprobs: tuple[TokenLogprob, ...]
    """The tokens whose text ends in what has been streamed by this piece, each cut to what it writes
    of the returned text: a token that this piece writes only the start of comes with a later one.
    Joined over a row's pieces, they are ``Completed.logprobs``."""


@dataclass(frozen=True)
class Completed:
    """A finished row: its text (special tokens removed, cut at a stop string) and token counts."""

    text: str
    finish_reason: str
    """``stop`` (end of sequence or a stop string) or ``length`` (``max_new_tokens`` reached)."""
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens whose keys and values the prefix cache held: not read again."""
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None
    """The prompt's tokens, for ``GenerationRequest.prompt_logprobs``."""
    logprobs: tuple[TokenLogprob, ...] | None = None
    """The tokens that write ``text``, for ``GenerationRequest.logprobs``."""
    ended_by: TokenLogprob | None = None
    """The end of sequence that ended the text, for ``GenerationRequest.logprobs``: a completion
    returns it last (lm-evaluation-harness reads a prompt's log probabilities up to the last token,
    whatever it is), a chat answer does not (it is no part of the message)."""


class Handle:
    """The client side of one submitted request: its text as it comes, then a ``Completed``.

    The worker thread pushes into an ``asyncio.Queue`` through ``call_soon_threadsafe``, so the event
    loop that submitted the request consumes it without ever blocking.
    """

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
        self.cancelled = False
        self.row: _Row | None = None
        """Its decoding state once it has started; kept while the row waits for its next turn."""
        self._loop = loop
        self._events: asyncio.Queue[str | Piece | Completed | BaseException] = asyncio.Queue()
        self._closed = False

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); the row frees its batch slot."""
        self.cancelled = True

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _push(self, item: str | Piece | Completed | BaseException) -> None:
        if self._closed:
            return
        if isinstance(item, Completed | BaseException):
            self._closed = True
        # The loop may be gone when a client disconnected and the server is shutting down.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    async def stream(self) -> AsyncIterator[str | Piece | Completed]:
        """Text pieces as they are generated (``Piece`` where the request asked for log probabilities),
        then the ``Completed`` row; raises ``ServingError``."""
        try:
            while True:
                timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
                try:
                    item = await asyncio.wait_for(self._events.get(), timeout)
                except TimeoutError:
                    # The worker stops the row at the same deadline; this covers a busy worker too.
                    self.cancel()
                    raise Timeout(self.request.timeout_s or 0.0) from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completed):
                    return
        finally:
            if not self._closed:
                self.cancel()

    async def result(self) -> Completed:
        """Waits for the whole row."""
        async for item in self.stream():
            if isinstance(item, Completed):
                return item
        raise Unavailable("generation ended without a result")  # stream() always ends with Completed


class _Row:
    """Decoding state of one row of a running batch."""

    def __init__(
        self, handle: Handle, tokenizer: Any, judged: Callable[[str], None] = lambda outcome: None
    ) -> None:
        self.handle = handle
        self.tokenizer = tokenizer
        self.judged = judged
        """Told ``replaced`` or ``kept`` once a copied first line decoded again is judged."""
        self.tokens: list[int] = []
        self.generated = 0
        """Tokens generated for it, those set back (``rewound``) too: ``repotune_generated_tokens``."""
        self.text = ""
        self.sent = 0  # characters of self.text already pushed to the handle
        self.cached = 0  # prompt tokens the prefix cache held when the row started
        self.done = False
        stops = handle.request.stop
        # Text that could still grow into a stop string is held back from streaming.
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.healed = not handle.request.heal
        """Whether the held-back text is written (a row gives way only then: ``HealingProcessor``
        holds a row's first tokens to it, and a row that gave way resumes free; one set back to decode
        its first line again is held to what is left of it, ``_set_back``)."""
        self.margins: list[float] = []
        """How far each token won over its runner-up (``runner_up``), for a row that judges its first
        line (``GenerationRequest.line_above``)."""
        self.runners: list[int] = []
        self.logprobs: list[float] = []
        """The log probability of each token, for a row that gates its lines (``min_confidence``)."""
        self.ends: list[int] = []
        """How many characters the tokens up to each step decode to (``decoded_ends``)."""
        self.chosen: tuple[float, int, float] = (math.inf, -1, 0.0)
        """The margin, runner-up and log probability of the token ``add`` gets next (``RunnerUpRecorder``)."""
        self.gating = handle.request.min_confidence > 0
        self.gated = 0
        """Characters of ``text`` in whole lines judged confident enough: streamed up to there only."""
        self.judging = bool(handle.request.line_above)
        """The first line is still to be judged, and is held back from the stream until it is."""
        self.recording = handle.request.logprobs is not None
        self.distribution: Any = None
        """The log-softmax of the scores the next token is chosen from, for a row that records its
        steps (``LogprobRecorder``)."""
        self.steps: list[Step] = []
        """Each token's log probability and the step's most likely tokens (``recording``)."""
        self.streamed = 0
        """How many of the text's tokens (``_written``) went out with the pieces streamed (``Piece``)."""
        self.ended_by: tuple[int, Step] | None = None
        """The end of sequence that ended the row, and its step (``recording``)."""
        self.prompt_steps: list[Step | None] | None = None
        """The prompt's tokens' steps (``GenerationRequest.prompt_logprobs``), scored when it starts."""
        self.first: tuple[list[int], list[float], list[Step], str, str | None] | None = None
        """While a copied first line is decoded again: the first answer's tokens, their log
        probabilities, their steps (``recording``), its text, and how it ended (None: it went on), to
        go back to where the line decoded again is no better."""
        self.tries: tuple[list[float], list[int], list[int]] | None = None
        """While a copied first line is decoded again: the first answer's margins and runners-up, and
        the steps of its least certain tokens not tried yet (``least_certain``), the next first."""
        self.rewound = False
        """Its tokens were set back (to decode a copied line again): it leaves the batch and is queued
        again, its tokens fed back as prompt as a row that gave way is."""

    @property
    def prompt_ids(self) -> list[int]:
        """What the model reads before the row's next token: the prompt and the tokens written so far."""
        return self.handle.request.prompt_ids + self.tokens

    def add(self, token: int, eos_ids: frozenset[int]) -> None:
        request = self.handle.request
        if self.handle.cancelled:
            self._end(None)
            return
        if self.handle.expired():
            self._end(None, Timeout(request.timeout_s or 0.0))
            return
        if token in eos_ids:
            if self.recording:
                self.ended_by = (token, self._step(token))
            if not self._judged(ending="stop"):
                self._end("stop")
            return
        if self.recording:
            self.steps.append(self._step(token))
        self.tokens.append(token)
        self.generated += 1
        self.margins.append(self.chosen[0])
        self.runners.append(self.chosen[1])
        self.logprobs.append(self.chosen[2])
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.ends.append(len(text))
        self.healed = self.healed or len(text) >= len(request.heal)
        # The held-back text is the prompt's: the completion starts after it (``HealingProcessor``
        # holds the first tokens to it, so the text starts with it once it is all written). Where the
        # processor let the row go before (no token could write the rest), the completion starts after
        # the part written.
        self.text = text[agreed(text, request.heal) :]
        for stop in request.stop:
            # A stop string can only be new if it ends within the newly decoded text.
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                self.text = self.text[:at]
                if not self._judged(ending="stop"):
                    self._end("stop")
                return
        if len(self.tokens) >= request.max_new_tokens:
            if not self._judged(ending="length"):
                self._end("length")
            return
        if self.judging and (self._judged(ending=None) or self.judging):
            return  # set back to decode the line again, or not whole yet: the line is not sent
        if self.gating and self._gate(whole=False):
            self._end("stop")
            return
        end = min(len(self.text) - self.hold, self.gated if self.gating else len(self.text))
        # A trailing U+FFFD is half of a multi-byte character whose other bytes come with later tokens.
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        if end > self.sent:
            new = (
                self._written(end, whole=True, decoded=text, after=self.streamed)[0] if self.recording else ()
            )
            self._send(end, new)

    def _send(self, end: int, new: Sequence[TokenLogprob]) -> None:
        """Stream ``text`` up to ``end``, with the tokens it completes (``new``, not streamed before)
        where the row records its steps."""
        piece = self.text[self.sent : end]
        if self.recording:
            self.handle._push(Piece(piece, tuple(new)))
            self.streamed += len(new)
        else:
            self.handle._push(piece)
        self.sent = end

    def _judged(self, ending: str | None) -> bool:
        """Judge the first line once it is whole (or the row ends, ``ending`` saying how): True when
        the row was set back to decode it again (``rewound``), or ended with the first answer."""
        if not self.judging:
            return False
        span = answer_span(self.text, after_newline=False)
        if span is None or (ending is None and "\n" not in self.text[span[1] :]):
            if ending is None:  # the line is not whole yet
                return False
            if self.first is not None:  # the line decoded again wrote nothing
                return self._try_again()
            self.judging = False  # no line to judge
            return False
        if not rewrites_line_above(self.text[span[0] : span[1]], self.handle.request.line_above):
            self.judging = False
            if self.first is not None:
                self.judged("replaced")
            return False
        if self.first is not None:
            return self._try_again()
        # The text starts after the held-back prompt text: the span's characters in the tokens decoded.
        shift = agreed(self.tokenizer.decode(self.tokens, skip_special_tokens=True), self.handle.request.heal)
        steps = least_certain(self.tokens, self.margins, self.tokenizer, (span[0] + shift, span[1] + shift))
        steps = [step for step in steps if step + 1 < self.handle.request.max_new_tokens]
        if not steps:
            self.judging = False
            return False
        self.first = (list(self.tokens), list(self.logprobs), list(self.steps), self.text, ending)
        self.tries = (list(self.margins), list(self.runners), steps)
        return self._try_again()

    def _try_again(self) -> bool:
        """Set the row back to decode its copied first line again from the next of its least certain
        tokens, or, where none is left, go back to the first answer."""
        assert self.first is not None and self.tries is not None
        tokens, logprobs, steps, _, _ = self.first
        margins, runners, left = self.tries
        if not left:
            return self._back_to_first()
        step = left.pop(0)
        # The runner-up's log probability: the chosen token's less the margin (of the same logits).
        runner = logprobs[step] - margins[step]
        self._set_back(
            [*tokens[:step], runners[step]],
            [*margins[:step], math.inf],
            [*logprobs[:step], runner],
            [*steps[:step], (steps[step][0] - margins[step], steps[step][1])] if self.recording else [],
        )
        return True

    def _back_to_first(self) -> bool:
        """Every line decoded again was blank or a copy too: the first answer stands, ended as it ended
        or going on from its tokens."""
        assert self.first is not None
        tokens, logprobs, steps, text, ending = self.first
        self.judging = False
        self.judged("kept")
        if ending is not None:
            self.tokens, self.logprobs, self.steps, self.text = tokens, logprobs, steps, text
            self.ends = decoded_ends(tokens, self.tokenizer)
            self._end(ending)
        else:
            self._set_back(tokens, [math.inf] * len(tokens), logprobs, steps)
        return True

    def _set_back(
        self, tokens: list[int], margins: list[float], logprobs: list[float], steps: list[Step]
    ) -> None:
        self.tokens, self.margins, self.runners, self.logprobs = tokens, margins, tokens[:], logprobs
        self.steps, self.ended_by = steps, None
        self.ends = decoded_ends(tokens, self.tokenizer)
        self.text, self.rewound, self.gated = "", True, 0
        # The token put in place may write less of the held-back text than the one it replaces.
        heal = self.handle.request.heal
        self.healed = len(self.tokenizer.decode(tokens, skip_special_tokens=True)) >= len(heal)

    def _gate(self, *, whole: bool) -> bool:
        """Judge the lines of ``text`` that are whole and not judged yet (``whole``: the row has ended, so
        its last line is whole too): True, ``text`` cut before it, at the first line whose confidence is
        below ``min_confidence``. Blank lines pass unjudged."""
        shift = None
        while self.gated < len(self.text):
            cut = self.text.find("\n", self.gated)
            if cut < 0 and not whole:
                return False
            end = len(self.text) if cut < 0 else cut
            if self.text[self.gated : end].strip():
                if shift is None:  # the text starts after the held-back prompt text (``add``)
                    decoded = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
                    shift = agreed(decoded, self.handle.request.heal)
                span = (self.gated + shift, end + shift)
                if line_confidence(self.logprobs, self.ends, span) < self.handle.request.min_confidence:
                    self.text = self.text[: self.gated]
                    return True
            self.gated = end + 1 if cut >= 0 else end
        return False

    def _end(self, reason: str | None, error: BaseException | None = None) -> None:
        self.done = True
        if reason is not None and error is None and self.gating and self._gate(whole=True):
            reason = "stop"  # cut before an unconfident line, not at the token limit
        if error is not None:
            self.handle._push(error)
            return
        if reason is None:  # cancelled: nobody is listening
            self.handle._push(Unavailable("the request was cancelled"))
            return
        logprobs = self._logprobs()
        if len(self.text) > self.sent:
            self._send(len(self.text), logprobs.get("logprobs", ())[self.streamed :])
        self.handle._push(
            Completed(
                text=self.text,
                finish_reason=reason,
                prompt_tokens=len(self.handle.request.prompt_ids),
                completion_tokens=len(self.tokens),
                cached_tokens=self.cached,
                prompt_logprobs=self._prompt_logprobs(),
                **logprobs,
            )
        )

    def _step(self, token: int) -> Step:
        """The log probability of ``token`` and the most likely tokens, from ``distribution``."""
        import torch

        chosen = torch.tensor([token], device=self.distribution.device)
        return steps_of(self.distribution[None], chosen, self.handle.request.logprobs or 0)[0]

    def _logprobs(self) -> dict[str, Any]:
        """``Completed.logprobs`` and ``ended_by`` (none without ``recording``): the tokens that write
        ``text``, each cut to the part of it that it writes (the text starts after the held-back
        prompt text and may be cut inside a token, by a stop string or a gate), and the end of sequence
        that ended the text, unless a stop string or a gate cut it before."""
        if not self.recording:
            return {}
        found, untouched = self._written(len(self.text), whole=False)
        ended = None
        if self.ended_by is not None and untouched:
            token, (logprob, top) = self.ended_by
            ended = TokenLogprob(self._spelled(token), logprob, self._named(top))
        return {"logprobs": found, "ended_by": ended}

    def _written(
        self, end: int, *, whole: bool, decoded: str | None = None, after: int = 0
    ) -> tuple[tuple[TokenLogprob, ...], bool]:
        """The tokens that write ``text`` up to ``end``, each cut to the part of it that it writes
        (``whole``: only those that end there or before, for a token that ``end`` cuts is not final
        yet), from the ``after``-th of them on (those streamed already are not named again), and
        whether ``end`` is where the tokens end (nothing they wrote was cut off). ``decoded``: the
        tokens decoded, where the caller has them."""
        if decoded is None:
            decoded = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        start = agreed(decoded, self.handle.request.heal)
        spans = [
            (step, first, last)
            for step, first, last in span_steps(self.ends, (start, start + end))
            if not whole or self.ends[step] <= start + end
        ]
        found = tuple(
            TokenLogprob(decoded[first:last], self.steps[step][0], self._named(self.steps[step][1]))
            for step, first, last in spans[after:]
        )
        return found, start + end == len(decoded)

    def _prompt_logprobs(self) -> tuple[TokenLogprob, ...] | None:
        """The prompt's tokens, each with what it writes of the prompt as ``echo`` decodes it."""
        if self.prompt_steps is None:
            return None
        ids = self.handle.request.prompt_ids
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False)
        pieces, before = [], 0
        # Every token, even one that writes nothing yet (a piece of a multi-byte character): lm-evaluation-
        # harness finds the continuation's tokens by their place.
        for after in decoded_ends(ids, self.tokenizer, skip_special_tokens=False):
            after = max(before, min(after, len(decoded)))
            pieces.append(decoded[before:after])
            before = after
        return tuple(
            TokenLogprob(piece, None, None)
            if step is None
            else TokenLogprob(piece, step[0], self._named(step[1]))
            for piece, step in zip(pieces, self.prompt_steps, strict=True)
        )

    def _spelled(self, token: int) -> str:
        """How a token is named: its text, or, for one that writes part of a character, its bytes
        (``bytes:\\xe2\\x80``, OpenAI's spelling), so that such tokens do not share a name."""
        text = self.tokenizer.decode([token], skip_special_tokens=False)
        if "\ufffd" not in text:
            return text
        piece = self.tokenizer.convert_ids_to_tokens(token)
        raw = byte_level(piece)
        return BYTES_NAME + ("".join(f"\\x{byte:02x}" for byte in raw) if raw is not None else piece)

    def _named(self, top: tuple[tuple[int, float], ...]) -> tuple[tuple[str, float], ...]:
        return tuple((self._spelled(token), logprob) for token, logprob in top)


def _gpt2_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character to byte: printable bytes stand for themselves, the others
    for the characters from U+0100 on, in order (``bytes_to_unicode`` of GPT-2's tokenizer)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [byte for byte in range(256) if byte not in kept]
    return {chr(byte): byte for byte in kept} | {chr(256 + n): byte for n, byte in enumerate(moved)}


GPT2_BYTES = _gpt2_bytes()


def byte_level(piece: str) -> bytes | None:
    """The bytes a byte-level BPE token (GPT-2's alphabet: SmolLM2, Qwen) stands for; None for a token
    of another alphabet."""
    if not piece or any(char not in GPT2_BYTES for char in piece):
        return None
    return bytes(GPT2_BYTES[char] for char in piece)


BYTES_NAME = "bytes:"
"""How the name of a token that writes part of a character starts (``_Row._spelled``)."""


def bytes_named(name: str) -> bytes:
    """The bytes a token's name stands for: its UTF-8, or those a ``bytes:\\xf0\\x9f`` name spells."""
    if name.startswith(BYTES_NAME) and name[len(BYTES_NAME) :].startswith("\\x"):
        return bytes.fromhex(name[len(BYTES_NAME) :].replace("\\x", ""))
    return name.encode()


Step = tuple[float, tuple[tuple[int, float], ...]]
"""A token's log probability, and the step's most likely tokens with theirs (``steps_of``)."""


def steps_of(distributions: Any, tokens: Any, top: int) -> list[Step]:
    """Per row of ``distributions`` (log-softmaxed scores), the log probability of ``tokens[row]`` (a
    tensor of token ids) and the ``top`` most likely tokens with theirs, the likeliest first."""
    chosen = distributions.gather(1, tokens[:, None])[:, 0].tolist()
    if not top:
        return [(logprob, ()) for logprob in chosen]
    values, ids = distributions.topk(top, dim=-1)
    return [
        (logprob, tuple(zip(row_ids, row_values, strict=True)))
        for logprob, row_ids, row_values in zip(chosen, ids.tolist(), values.tolist(), strict=True)
    ]


SCORED_POSITIONS = 2048
"""Most prompt tokens scored in one forward pass (``prompt_steps``): their logits are held at once, 400 MB
in float32 for SmolLM2's 49k-token vocabulary, 1.2 GB for Qwen's 150k."""


def prompt_steps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    tops: Sequence[int],
    keep: Callable[[Any, Sequence[int]], None] | None = None,
    cache_argument: str = "past_key_values",
) -> list[list[Step | None]]:
    """For each prompt, each token's log probability given the tokens before it, and the ``tops[i]``
    most likely tokens there (OpenAI's ``echo`` with ``logprobs``); None for the first token, which
    nothing predicts. The prompts are read together, right-padded (a token attends only to those before
    it, so padding after a prompt changes nothing for it), up to ``SCORED_POSITIONS`` tokens a forward
    pass. Given ``keep`` (``PrefixCache.keep``), each prompt's keys and values are handed to it with
    the prompt, for ``generate`` to go on from: a pass's own cache for a prompt read alone, else a copy
    of the prompt's row up to its padding."""
    import torch
    from transformers.cache_utils import DynamicCache

    device = next(model.parameters()).device
    groups: list[list[int]] = []
    for index, ids in enumerate(prompts):
        if groups and sum(len(prompts[i]) for i in groups[-1]) + len(ids) <= SCORED_POSITIONS:
            groups[-1].append(index)
        else:
            groups.append([index])
    found: dict[int, list[Step | None]] = {}
    for group in groups:
        width = max(len(prompts[i]) for i in group)
        tokens = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for line, index in enumerate(group):
            tokens[line, : len(prompts[index])] = torch.tensor(list(prompts[index]), dtype=torch.long)
            mask[line, : len(prompts[index])] = 1
        cache = DynamicCache(config=model.config) if keep is not None else None
        cached = {cache_argument: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        with torch.inference_mode():
            logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device), **cached).logits
            for line, index in enumerate(group):
                length = len(prompts[index])
                if keep is not None:
                    keep(cache if len(group) == 1 else row_cache(cache, line, 0, length), prompts[index])
                distributions = torch.log_softmax(logits[line, : length - 1].float(), dim=-1)
                found[index] = [
                    None,
                    *steps_of(distributions, tokens[line, 1:length].to(device), tops[index]),
                ]
    return [found[index] for index in range(len(prompts))]


class _RowStopper:
    """A ``StoppingCriteria`` that feeds each row its new token and says, per row, whether it is done.

    ``generate`` calls it after every decoding step with the whole sequence so far; rows it reports as
    done get padding from then on, and ``generate`` returns once every row is done. After
    ``turn_tokens`` steps (0: never) it ends the whole batch early when ``others_wait()`` says requests
    wait behind it (``gave_way``): the rows not done are to be queued again.
    """

    def __init__(
        self,
        rows: list[_Row],
        eos_ids: frozenset[int],
        turn_tokens: int = 0,
        others_wait: Callable[[], bool] = lambda: False,
    ) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
        self.turn_tokens = turn_tokens
        self.others_wait = others_wait
        self.steps = 0
        self.gave_way = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if not row.done and not row.rewound:
                row.add(token, self.eos_ids)
        self.steps += 1
        done = [row.done or row.rewound for row in self.rows]
        if (
            self.turn_tokens
            and self.steps >= self.turn_tokens
            and not all(done)
            and all(row.healed for row in self.rows if not row.done)
            and self.others_wait()
        ):
            self.gave_way = True
            done = [True] * len(self.rows)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Batcher:
    """The request queue and the worker thread that runs batches through ``model.generate``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 8,
        max_queue: int = 256,
        batch_wait_ms: float = 5.0,
        eos_ids: Iterable[int] = (),
        model_name: str = "model",
        turn_tokens: int = 32,
        prefix_cache_tokens: int = 0,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or min(batch_wait_ms, turn_tokens, prefix_cache_tokens) < 0:
            raise ValueError(
                "max_batch_size and max_queue must be at least 1, batch_wait_ms, turn_tokens and "
                "prefix_cache_tokens not negative"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.token_texts = TokenTexts(tokenizer)
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.eos_ids = frozenset(eos_ids)
        # Never decoded: the file header's token (``<filename>``), as evaluation scores
        # (``repotune.evaluate.generate.greedy_lines``).
        self.banned = suppressed_token_ids(tokenizer, self.eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)
        self.model_name = model_name
        self.turn_tokens = turn_tokens
        # A row reuses the keys and values of a sequence served before it, up to the tokens they share
        # (``repotune.kvcache``), one kept for each row a batch can hold and a few more.
        self.plain = plain_cache(model)
        self.prefix_cache = (
            PrefixCache(model, prefix_cache_tokens, entries=max(4, max_batch_size))
            if prefix_cache_tokens and self.plain
            else None
        )
        self.device = next(model.parameters()).device
        # On a CPU, arithmetic is the limit: the rows of a batch read their prompts alone, computing no
        # padding, and are decoded together (``_start_cache``), as evaluation's ``greedy_lines`` does.
        self.prefill_alone = self.plain and self.device.type == "cpu"
        # A plain cache decodes in place, in room made for the tokens to come (``_start_cache``); False
        # gives transformers' own layers, which copy themselves whole on each token (the benchmark's
        # baseline: ``benchmarks/serve_prefill.py``).
        self.decode_room = self.plain
        self.cache_argument = cache_argument(model)
        self.last_logit_only = last_logit_only(model)
        self.batches = 0  # generate() calls so far
        self.rows = 0  # requests generated so far
        self.turns_given = 0  # batches that gave way to requests waiting behind them
        self.line_above = {"replaced": 0, "kept": 0}  # copied first lines decoded again, by outcome
        self.largest_batch = 0
        self._pending: deque[Handle] = deque()
        self._running: list[Handle] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="repotune-generate", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Handle:
        """Queue one request; see ``submit_all``."""
        return self.submit_all([request])[0]

    def submit_all(self, requests: list[GenerationRequest]) -> list[Handle]:
        """Queue ``requests`` together, or none of them: raises ``QueueFull`` (429) when the queue
        (``max_queue`` rows) cannot take them all, and then leaves nothing queued.

        Must be called from a running event loop, which receives the handles' events.
        """
        loop = asyncio.get_running_loop()
        handles = [Handle(request, loop) for request in requests]
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is stopping")
            if len(self._pending) + len(handles) > self.max_queue:
                REJECTED.labels(self.model_name, "queue_full").inc()
                raise QueueFull(self.max_queue, len(self._pending), len(handles))
            self._pending.extend(handles)
            QUEUED.labels(self.model_name).set(len(self._pending))
            self._cond.notify()
        return handles

    def queued(self) -> int:
        """Rows waiting for a batch now."""
        with self._cond:
            return len(self._pending)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse new requests, fail the waiting ones, and let the running batch finish (with the rows
        that gave way to others and wait for their next turn)."""
        with self._cond:
            self._stopping = True
            waiting = [handle for handle in self._pending if handle.row is None]
            self._pending = deque(handle for handle in self._pending if handle.row is not None)
            self._cond.notify_all()
        for handle in waiting:
            handle._push(Unavailable("the server is stopping"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def cut(self, reason: str) -> None:
        """Refuse new requests and fail every one now, waiting or running: a server whose grace period
        is ending tells each client so (a stream ends with an error event) rather than have the
        connection closed on it. Running rows stop at their next token."""
        with self._cond:
            self._stopping = True
            handles = [*self._pending, *self._running]
            self._pending.clear()
            self._cond.notify_all()
        for handle in handles:
            handle._push(Unavailable(reason))
            handle.cancel()

    def _next_batch(self) -> list[Handle] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:  # stopping, and no row waits for its next turn
                return None
            # Requests that arrive within the wait window join this batch instead of the next one.
            window_end = time.monotonic() + self.batch_wait_s
            while len(self._pending) < self.max_batch_size and not self._stopping:
                left = window_end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            live: deque[Handle] = deque()
            for handle in self._pending:
                if handle.cancelled:
                    continue
                if handle.expired():
                    REJECTED.labels(self.model_name, "timeout").inc()
                    handle._push(Timeout(handle.request.timeout_s or 0.0))
                    continue
                live.append(handle)
            if not live:
                self._pending = live
                return []
            key = live[0].request.sampling.batch_key()
            batch: list[Handle] = []
            rest: deque[Handle] = deque()
            for handle in live:
                if len(batch) < self.max_batch_size and handle.request.sampling.batch_key() == key:
                    batch.append(handle)
                else:
                    rest.append(handle)
            self._pending = rest
            QUEUED.labels(self.model_name).set(len(rest))
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            with self._cond:
                self._running = batch
            try:
                unfinished = self._generate(batch)
                with self._cond:
                    # Behind the requests that waited: they get the next turn.
                    self._pending.extend(unfinished)
                    self._running = []
                    QUEUED.labels(self.model_name).set(len(self._pending))
            except Exception as err:
                log.exception("generation failed for a batch of %d", len(batch))
                for handle in batch:
                    handle._push(ServingError(500, f"generation failed: {err}", type="server_error"))
            finally:
                with self._cond:
                    self._running = []

    def _generate(self, batch: list[Handle]) -> list[Handle]:
        """Runs ``batch`` through one ``generate``; returns the rows to queue again: those that gave way,
        not done, or those set back to decode a copied first line again (``_Row.judging``)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        fresh = [handle for handle in batch if handle.row is None]
        for handle in fresh:
            handle.row = _Row(handle, self.tokenizer, self._judged)
        rows = [handle.row for handle in batch if handle.row is not None]
        # Counted when the batch starts: its rows' results reach clients before generate() returns.
        self.batches += 1
        self.rows += len(fresh)
        self.largest_batch = max(self.largest_batch, len(batch))
        BATCHES.labels(self.model_name).inc()
        ROWS.labels(self.model_name).inc(len(fresh))
        BATCH_SIZE.labels(self.model_name).observe(len(batch))
        generated_before = sum(row.generated for row in rows)
        prompts = [row.prompt_ids for row in rows]
        width = max(len(ids) for ids in prompts)
        # Left padding: every row's next token lands in the same column. A row that resumes has its
        # tokens so far at the end of its prompt: its completion starts that many columns earlier.
        starts = [width - len(row.tokens) for row in rows]
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in prompts])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        device = next(self.model.parameters()).device
        stopper = _RowStopper(rows, self.eos_ids, self.turn_tokens, lambda: bool(self._pending))
        sampling = batch[0].request.sampling
        kwargs: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if not sampling.greedy:
            # top_k=0 turns off transformers' default top-50 cut, which OpenAI's API does not have.
            kwargs = {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": 0,
            }
            if sampling.seed is not None and fresh:  # a batch of resumed rows goes on with the generator
                torch.manual_seed(sampling.seed)
        if self.banned:
            kwargs["suppress_tokens"] = self.banned
        processors: list[Any] = []
        # A row that gave way wrote its held-back text before (``_RowStopper``); one set back to decode its
        # first line again may have to finish writing it.
        heals = ["" if row.healed else row.handle.request.heal for row in rows]
        if any(heals):
            processors.append(HealingProcessor(heals, starts, self.token_texts))
        if any(handle.request.sampling.penalized for handle in batch):
            processors.append(PenaltyProcessor([handle.request.sampling for handle in batch], starts))
        if any(handle.request.sampling.line_penalty for handle in batch):
            penalties = [handle.request.sampling.line_penalty for handle in batch]
            processors.append(LinePenaltyProcessor(penalties, starts, newline_tokens(self.tokenizer)))
        if any(row.judging or row.gating for row in rows):
            processors.append(RunnerUpRecorder(rows, self.eos_ids))  # late: it sees the scores chosen from
        if any(row.recording for row in rows):
            processors.append(LogprobRecorder(rows))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        new_tokens = max(row.handle.request.max_new_tokens - len(row.tokens) for row in rows)
        scoring = [row for row in rows if row.handle.request.prompt_logprobs and row.prompt_steps is None]
        if scoring:
            # The prompts scored are kept, so that generate does not read them again where it starts
            # from what is kept (``_start_cache``): where every row is scored (each then kept but its
            # last token, on any device), or on a CPU, where rows are read alone.
            keep = None
            if self.prefix_cache is not None and (len(scoring) == len(rows) or self.prefill_alone):
                keep = self.prefix_cache.keep
            asked = [row.handle.request for row in scoring]
            steps = prompt_steps(self.model, [r.prompt_ids for r in asked], [r.logprobs or 0 for r in asked],
                                 keep, self.cache_argument)  # fmt: skip
            for row, found in zip(scoring, steps, strict=True):
                row.prompt_steps = found
        with torch.inference_mode():
            cache, reused = self._start_cache(prompts, new_tokens)
            for row, tokens in zip(rows, reused, strict=True):
                if not row.tokens:  # the request's prompt, not a turn's
                    row.cached = tokens
            if cache is not None:
                kwargs[self.cache_argument] = cache
            sequences = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=new_tokens,
                stopping_criteria=StoppingCriteriaList([stopper]),
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids) or None,
                **kwargs,
            )
        if cache is not None and self.prefix_cache is not None:
            for row, ids in enumerate(prompts):
                start = width - len(ids)  # the row's left padding, in the cache as in the sequences
                kept = cache if len(prompts) == 1 else row_cache(cache, row, start)
                self.prefix_cache.keep(kept, sequences[row, start:].tolist())
        TOKENS.labels(self.model_name).inc(sum(row.generated for row in rows) - generated_before)
        again = [row for row in rows if row.rewound]
        for row in again:
            row.rewound = False
        if stopper.gave_way:
            self.turns_given += 1
            return [row.handle for row in rows if not row.done]
        for row in rows:
            if not row.done and row not in again:  # generate stopped at max_new_tokens before the criterion
                row._end("length")
        return [row.handle for row in again]

    def _judged(self, outcome: str) -> None:
        """Counts a copied first line decoded again by ``outcome`` (before its row's result is sent)."""
        LINE_ABOVE.labels(self.model_name, outcome).inc()
        self.line_above[outcome] += 1

    def _start_cache(self, prompts: list[list[int]], new_tokens: int) -> tuple[Any, list[int]]:
        """The cache ``generate`` starts from (None: it reads the prompts whole, left-padded together,
        into a cache of its own), and how many tokens of each prompt it holds.

        One row: the prefix cache's (``PrefixCache.take``), and ``generate`` reads the rest of the
        prompt. Several rows where reading them alone costs less (``_cheaper_alone``: on a CPU, or
        where every row is kept but its last token): each row's kept prefix, the rest of its prompt but
        the last token read alone, and the rows' caches left-padded into one, so that ``generate``
        reads the last column; the answers are those of the batch read whole (``tests/test_serving.py``).
        Else an empty cache that ``generate`` fills left-padded (with the prefix cache on, each row's
        part is kept from it afterwards).

        A plain cache (``plain_cache``) has room for the rest of the prompts and the ``new_tokens`` to
        decode (``repotune.roomy_cache``): each token is written in place, where transformers' layers
        copy the whole cache (every row's prompt) on every token (``benchmarks/serve_prefill.py``)."""
        import torch
        from transformers.cache_utils import DynamicCache

        nothing = [0] * len(prompts)
        if not self.plain:  # a sliding window or a recurrent state: generate's own cache, read together
            return None, nothing

        def roomy(cache: Any, room: int) -> Any:
            return with_room(cache, room) if self.decode_room else cache

        if len(prompts) == 1:
            cache = self._row_cache(prompts[0])
            held = cache.get_seq_length()
            return roomy(cache, len(prompts[0]) - held + new_tokens), [held]
        if not self._cheaper_alone(prompts):
            width = max(len(ids) for ids in prompts)
            return roomy(DynamicCache(config=self.model.config), width + new_tokens), nothing
        caches, masks, reused = [], [], []
        for ids in prompts:
            cache = self._row_cache(ids)
            held = cache.get_seq_length()
            reused.append(held)
            if held < len(ids) - 1:
                rest = torch.tensor([ids[held:-1]], device=self.device)
                self.model(
                    input_ids=rest, use_cache=True, **{self.cache_argument: cache}, **self.last_logit_only
                )
            caches.append(cache)
            masks.append(torch.ones((1, len(ids) - 1), dtype=torch.long, device=self.device))
        return left_padded(caches, masks, room=1 + new_tokens if self.decode_room else 0)[0], reused

    def _cheaper_alone(self, prompts: list[list[int]]) -> bool:
        """Whether reading a batch's prompts one by one (after their kept prefixes) costs less than
        reading them together, left-padded to the longest: each pass is counted as ``PASS_TOKENS``
        tokens, and the padding as text. Short prompts of about one length go together; long ones of
        many lengths, or ones mostly kept, go alone. On any device, where every prompt is kept but its
        last token (prompts scored for ``echo``, ``prompt_steps``), there is no pass to make at all."""
        if min(len(ids) for ids in prompts) < 2:
            return False
        kept = self.prefix_cache.reusable if self.prefix_cache is not None else lambda ids: 0
        left = [len(ids) - 1 - kept(ids) for ids in prompts]  # to read before the last token
        if not any(left):
            return True
        if not self.prefill_alone:
            return False
        alone = sum(PASS_TOKENS + tokens for tokens in left if tokens)
        return alone < PASS_TOKENS + len(prompts) * max(len(ids) for ids in prompts)

    def _row_cache(self, ids: list[int]) -> Any:
        """The cache a row starts from: what the prefix cache kept of its prompt ``ids`` (counted on
        ``/metrics``), or a new, empty one."""
        from transformers.cache_utils import DynamicCache

        if self.prefix_cache is None:
            return DynamicCache(config=self.model.config)
        cache, reused = self.prefix_cache.take(ids)
        PREFIX_TOKENS.labels(self.model_name).inc(reused)
        return cache


class PenaltyProcessor:
    """A transformers ``LogitsProcessor`` for OpenAI's ``presence_penalty`` and ``frequency_penalty``,
    row by row: ``logit[t] -= frequency * count[t] + presence * (count[t] > 0)``, ``count`` being how
    often the row's completion (its tokens from column ``starts[row]`` on) has written ``t``. The
    OpenAI API reference gives this formula; vLLM applies it the same way, to the output tokens only."""

    def __init__(self, sampling: Sequence[SamplingParams], starts: Sequence[int]) -> None:
        import torch

        self.starts = torch.tensor(list(starts), dtype=torch.long)
        self.presence = torch.tensor([s.presence_penalty for s in sampling], dtype=torch.float32)
        self.frequency = torch.tensor([s.frequency_penalty for s in sampling], dtype=torch.float32)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        columns = torch.arange(input_ids.shape[1], device=input_ids.device)
        written = (columns[None, :] >= self.starts.to(input_ids.device)[:, None]).to(scores.dtype)
        if not written.any():
            return scores
        counts = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, input_ids, written)
        frequency = self.frequency.to(scores.device, scores.dtype)[:, None]
        presence = self.presence.to(scores.device, scores.dtype)[:, None]
        return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)


class RunnerUpRecorder:
    """A transformers ``LogitsProcessor`` that changes nothing: it gives each row that judges its first
    line (``_Row.judging``) or gates its lines (``_Row.gating``) the margin, runner-up and log
    probability of the token greedy decoding picks from these scores (``runner_up``,
    ``chosen_logprobs``), for ``_Row.add``. It must come last, after every processor that changes the
    scores."""

    def __init__(self, rows: Sequence[_Row], eos_ids: frozenset[int]) -> None:
        self.rows, self.eos_ids = rows, eos_ids

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        chosen = scores.argmax(dim=-1)
        margins, runners = runner_up(scores, chosen, self.eos_ids)
        logprobs = chosen_logprobs(scores, chosen)
        for row, margin, runner, logprob in zip(self.rows, margins, runners, logprobs, strict=True):
            row.chosen = (margin, runner, logprob)
        return scores


class LogprobRecorder:
    """A transformers ``LogitsProcessor`` that changes nothing: it gives each row that records its steps
    (``GenerationRequest.logprobs``) the log-softmax of the scores its next token is chosen from, for
    ``_Row.add``. It comes after every processor that changes the scores; transformers applies the
    temperature and top-p after it."""

    def __init__(self, rows: Sequence[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        distributions = torch.log_softmax(scores.float(), dim=-1)
        for line, row in enumerate(self.rows):
            if row.recording:
                row.distribution = distributions[line]
        return scores


async def merged(handles: list[Handle]) -> AsyncIterator[tuple[int, str | Piece | Completed]]:
    """Events of several handles as ``(index, text or Completed)``, in arrival order; raises the first
    ``ServingError`` of any of them, and cancels them all when the consumer stops early."""
    queue: asyncio.Queue[tuple[int, str | Piece | Completed | ServingError]] = asyncio.Queue()

    async def pump(index: int, handle: Handle) -> None:
        try:
            async for item in handle.stream():
                await queue.put((index, item))
        except ServingError as err:
            await queue.put((index, err))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, ServingError):
                raise item
            if isinstance(item, Completed):
                remaining -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for handle in handles:
            handle.cancel()


async def results(handles: list[Handle]) -> list[Completed]:
    """Every handle's ``Completed`` row, in the handles' order."""
    done: dict[int, Completed] = {}
    async for index, item in merged(handles):
        if isinstance(item, Completed):
            done[index] = item
    return [done[i] for i in range(len(handles))]
