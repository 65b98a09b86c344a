"""Batched greedy completion and batched perplexity, with the same numbers as one sample at a time.

Completion: prompts are grouped by length into batches of up to ``batch_size`` and decoded greedily
together (``greedy_lines``, what ``model.generate`` does greedily, with the same answers): on a CPU
each prompt is first read alone, without padding, and the caches are left-padded into one batch,
with room for the tokens to come (``repotune.roomy_cache``); a row's position ids count from its own
first token, so it sees the positions it would see alone, and it leaves the batch once it has written
its first non-blank line (``line_done``) or at end of sequence. The answer is that line
(``answer_line``), the rule CrossCodeEval applies.

Perplexity: each text is tokenized once with character offsets, so the scored tokens (the added
lines of a temporal eval record, or all of a held-out file) are picked by where they are in the
text, not by tokenizing pieces apart, which would change the tokens at the seams. Long texts are read
in windows of ``seq_len`` tokens that overlap by half, each window scoring only what the one before
did not (the sliding-window perplexity of the transformers documentation), so every scored token has
at least ``seq_len / 2`` tokens of context where the text has them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from repotune.data.transforms import FILENAME_TOKEN, PLAIN_HEADER, encode, file_header
from repotune.decoding import (
    RETRIES,
    answer_span,
    ban_tokens,
    chosen_logprobs,
    decoded_ends,
    least_certain,
    line_above,
    line_confidence,
    newline_tokens,
    penalize_lines,
    rewrites_line_above,
    runner_up,
    stop_token_ids,
    suppressed_token_ids,
)
from repotune.errors import RepotuneError
from repotune.evaluate.samples import ScoredText
from repotune.kvcache import (
    PrefixCache,
    cache_argument,
    keeps_logits,
    last_logit_only,
    left_padded,
    plain_cache,
)

TRAINING_FORMAT_STARTS = (
    "diff --git", "@@", "--- a/", "+++ b/", FILENAME_TOKEN, PLAIN_HEADER.split("{", 1)[0]
)  # fmt: skip
"""How a commit diff's header lines and a file header start: a code completion that starts so writes the
training format."""
DIFF_MARKS = ("+", "-")
"""How a diff's added and removed lines start: the marker, then the line of code (issue 15 found a model
trained mostly on diffs answering ``-    @click.option(...)``)."""


def answer_line(generated: str, *, after_newline: bool) -> str:
    """The first non-blank line of ``generated``, without its newline; ``""`` when there is none.

    ``after_newline``: the prompt ended with a newline that was held back (``prompt_ids``), so the model
    is still on the line before the cursor; what it writes before its first newline finishes that line
    and is not the answer. A leading newline, or a blank line, is not an answer either.
    """
    span = answer_span(generated, after_newline=after_newline)
    return generated[span[0] : span[1]] if span is not None else ""


def line_done(generated: str, *, after_newline: bool) -> bool:
    """Whether ``generated`` holds its whole answer: a non-blank line that a newline has ended."""
    if after_newline:
        cut = generated.find("\n")
        if cut < 0:
            return False
        generated = generated[cut + 1 :]
    return any(line.strip() for line in generated.split("\n")[:-1])


def starts_like_training_format(answer: str, expected: str, before: str = "") -> bool:
    """Whether a completion starts like a line of a diff or a file header where the file does not:
    neither its own line (``expected``) nor a line of the file before the cursor (``before``) starts
    that way.

    A diff's added or removed line is its marker (``+``, ``-``) and then a line of code: it counts
    when what follows the marker is indented as the line to write is, or as the line above it
    (``+    def f(model):`` where the file has ``    kinds = {``). A dash that starts a bullet
    (``- :param bool auto_exc: ...`` in a docstring whose lines are indented by eight), or a dash
    alone, is the wrong line but not the training format: these were most of what a plain "starts
    with a dash" rule counted on the quality benchmark's projects and the demo, base + retrieval's
    answers among them. A YAML list item (``- case: x``) or a Markdown bullet is the file's syntax:
    in a file with such lines, a line answered in kind is not an artefact (base and candidate alike
    wrote ``- case: ...`` after a mypy test case in attrs' ``tests/test_mypy.yml``).
    """
    lines = before.splitlines()

    def the_files(mark: str) -> bool:
        return expected.startswith(mark) or any(line.startswith(mark) for line in lines)

    if any(answer.startswith(mark) and not the_files(mark) for mark in TRAINING_FORMAT_STARTS):
        return True
    mark, code = answer[:1], answer[1:]
    # A mark doubled is something else: ``---`` (a YAML document, a Markdown rule), ``-- x`` (an SQL
    # comment), ``++i``; a diff's own ``--- a/`` and ``+++ b/`` are headers, above.
    if mark not in DIFF_MARKS or not code.strip() or code.startswith(mark) or the_files(mark):
        return False
    return _indent(code) in (_indent(expected), _indent(line_above(before)))


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


@dataclass(frozen=True)
class Completion:
    """One model's answer to one prompt."""

    text: str
    """The first non-blank line, special tokens removed: what is scored."""
    raw: str
    """The same line with special tokens kept (``<filename>`` is one), for the format check."""
    retried: bool = False
    """The first answer wrote the line above again, and this one was decoded again in its place
    (``complete_lines``)."""
    confidence: float = field(default=0.0, compare=False)
    """How sure the model was of ``text``: the geometric mean of the probabilities it gave the tokens
    that wrote it and its newline (``repotune.decoding.line_confidence``); 0.0 without an answer, or
    when the tokens' probabilities were not recorded. Not compared: the same answer decoded in another
    batch has the same tokens, but their probabilities differ in the last digits (the rounding of the
    matrix products)."""

    @classmethod
    def from_tokens(
        cls,
        tokens: Sequence[int],
        tokenizer: Any,
        eos: Sequence[int],
        *,
        after_newline: bool,
        retried: bool = False,
        logprobs: Sequence[float] | None = None,
    ) -> Completion:
        """The answer in the tokens a model wrote, up to its first end of sequence; ``logprobs``: the
        log probability of each token (``Written.logprobs``), for its ``confidence``."""
        ends = [tokens.index(token) for token in eos if token in tokens]
        tokens = tokens[: min(ends)] if ends else tokens
        text, raw = (tokenizer.decode(tokens, skip_special_tokens=skip) for skip in (True, False))
        span = answer_span(text, after_newline=after_newline)
        confidence = 0.0
        if span is not None and logprobs is not None:
            confidence = line_confidence(logprobs, decoded_ends(tokens, tokenizer), span)
        return cls(
            answer_line(text, after_newline=after_newline),
            answer_line(raw, after_newline=after_newline),
            retried,
            confidence,
        )


class Progress:
    """``done/total`` with an ETA through ``log``, at most every ``every`` seconds, and when finished."""

    def __init__(
        self,
        log: Callable[[str], None],
        what: str,
        total: int,
        *,
        every: float = 5.0,
        unit: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.what, self.total, self.every, self.clock = log, what, total, every, clock
        self.unit = unit
        self.done = 0
        self.started = self.last = clock()

    def advance(self, count: int) -> None:
        self.done += count
        now = self.clock()
        elapsed = now - self.started
        if self.done >= self.total:
            self.log(f"  {self.what}: {self.done}/{self.total}{self.unit} in {_duration(elapsed)}")
        elif now - self.last >= self.every:
            left = elapsed / self.done * (self.total - self.done)
            self.log(f"  {self.what}: {self.done}/{self.total}{self.unit}, about {_duration(left)} left")
            self.last = now


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def prompt_ids(prompt: str, tokenizer: Any, max_tokens: int) -> tuple[list[int], bool]:
    """The prompt's token ids, and whether a final newline was held back from them.

    BPE tokenizers merge a newline with the indentation after it into one token (``\\n`` and four
    spaces), so a prompt cut after the newline asks the model to go on from a token boundary it never
    saw in training. The newline is left for the model to write; ``answer_line`` skips past it. A
    prompt longer than ``max_tokens`` loses its oldest tokens.
    """
    after_newline = prompt.endswith("\n")
    text = prompt[:-1] if after_newline else prompt
    ids = encode(tokenizer, text)
    return ids[-max_tokens:], after_newline


KEPT_PROMPTS = 32
"""Prompts whose caches a model's scorer keeps (``PrefixCache``) for the prompts read after them, on a
CPU: a retrieval arm puts the same chunks in front of many lines, and its FIM spans are asked after
its 30 to 40 lines. SmolLM2-135M's cache takes 46 KB a token in float32, so 32 prompts of 700 tokens
hold about 1 GB (the demo's evaluate step peaked 0.3 GB higher with them, benchmarks/README.md)."""
PREFIX_MIN_TOKENS = 16
"""The fewest tokens a prompt must share with a kept one to start from its cache."""


def complete_lines(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    progress: Progress | None = None,
    prefill_alone: bool | None = None,
    line_penalty: float = 0.0,
    prefixes: PrefixCache | None = None,
    befores: Sequence[str | None] | None = None,
    retries: int = RETRIES,
) -> list[Completion]:
    """Greedy first-non-blank-line completions of ``prompts``, ``batch_size`` at a time, with the line
    repeat penalty ``line_penalty`` (``repotune.decoding``; 0: plain greedy).

    ``prefill_alone``: read each prompt in a forward pass of its own (no padding) rather than the
    batch's prompts left-padded together; None does so on a CPU, where a batch reads its prompts no
    faster than one at a time and padding is paid for like text (``greedy_lines``). ``prefixes``: the
    caches of prompts read before, for prompts read alone that start as one of them does.

    ``befores``: the text above each prompt's cursor. An answer that writes its last non-blank line
    again is decoded again from its least certain token (``repotune.decoding``, "Writing the line above
    again"), then from the next least certain, up to ``retries`` tokens: the first new answer that is
    neither blank nor a copy too replaces it. None (for all prompts, or for one): no answer is.
    """
    limit = context_limit(model) - max_new_tokens
    encoded = [prompt_ids(prompt, tokenizer, limit) for prompt in prompts]
    eos = sorted(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    alone = model.device.type == "cpu" if prefill_alone is None else prefill_alone
    newlines = newline_tokens(tokenizer) if line_penalty else frozenset()
    banned = frozenset(suppressed_token_ids(tokenizer, eos))

    def decode(jobs: Sequence[tuple[int, Written | None]]) -> list[Written]:
        """One batch: each job's prompt, ``(index, begun)``, is prompt ``index`` with ``begun`` written."""

        def done(row: int, generated: list[int]) -> bool:
            text = tokenizer.decode(generated, skip_special_tokens=True)
            return line_done(text, after_newline=encoded[jobs[row][0]][1])

        return greedy_lines(
            model, [encoded[index][0] + (begun.tokens if begun else []) for index, begun in jobs],
            max_new_tokens=max_new_tokens, eos=eos, pad=pad, done=done, prefill_alone=alone,
            line_penalty=line_penalty, newlines=newlines, prefixes=prefixes, begun=[b for _, b in jobs],
            banned=banned,
        )  # fmt: skip

    def answer(index: int, row: Written, retried: bool = False) -> Completion:
        return Completion.from_tokens(
            row.tokens,
            tokenizer,
            eos,
            after_newline=encoded[index][1],
            retried=retried,
            logprobs=row.logprobs,
        )

    aboves = list(befores) if befores is not None else [None] * len(encoded)
    results: list[Completion | None] = [None] * len(encoded)
    padding = padding_budget(model) if alone else None
    for rows in length_batches([len(ids) for ids, _ in encoded], batch_size, padding):
        tries: dict[int, list[Written]] = {}  # each copy's starts not tried yet, the next first
        for index, row in zip(rows, decode([(index, None) for index in rows]), strict=True):
            results[index] = first = answer(index, row)
            above = aboves[index]
            if above is not None and rewrites_line_above(first.text, above):
                starts = _retried_starts(row, tokenizer, eos, after_newline=encoded[index][1], count=retries)
                tries[index] = [begun for begun in starts if len(begun.tokens) < max_new_tokens]
        # Right after their batch, while the kept caches (``prefixes``) still hold their prompts; one
        # try of each copy a round, as a server tries them, until a try writes a line.
        while tries := {index: left for index, left in tries.items() if left}:
            again = [(index, left.pop(0)) for index, left in tries.items()]
            for redo in length_batches(
                [len(encoded[index][0]) + len(begun.tokens) for index, begun in again], batch_size, padding
            ):
                jobs = [again[i] for i in redo]
                for (index, _), row in zip(jobs, decode(jobs), strict=True):
                    completion = answer(index, row, retried=True)
                    if completion.text.strip() and not rewrites_line_above(completion.text, aboves[index]):
                        results[index] = completion
                        tries[index] = []
        if progress is not None:
            progress.advance(len(rows))
    return [c for c in results if c is not None]


def _retried_starts(
    row: Written, tokenizer: Any, eos: Sequence[int], *, after_newline: bool, count: int
) -> list[Written]:
    """What a copied line is decoded again after, the first to try first: for each of its ``count``
    least certain tokens, the tokens before it and its runner-up; empty when no token of the line can
    be changed. The runner-up's log probability is the chosen token's less the margin between them
    (both of the same logits)."""
    tokens = row.tokens[: min([row.tokens.index(t) for t in eos if t in row.tokens], default=len(row.tokens))]
    span = answer_span(tokenizer.decode(tokens, skip_special_tokens=True), after_newline=after_newline)
    steps = least_certain(tokens, row.margins, tokenizer, span, count) if span is not None else []
    starts = []
    for step in steps:
        begun = [*tokens[:step], row.runners[step]]
        # Not decoded again a second time: its margins are infinite, its runners-up its own tokens.
        margins = [math.inf] * len(begun)
        logprobs = [*row.logprobs[:step], row.logprobs[step] - row.margins[step]]
        starts.append(Written(begun, margins, begun[:], logprobs))
    return starts


def greedy_lines(
    model: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos: Sequence[int],
    pad: int,
    done: Callable[[int, list[int]], bool],
    prefill_alone: bool,
    line_penalty: float = 0.0,
    newlines: frozenset[int] = frozenset(),
    prefixes: PrefixCache | None = None,
    begun: Sequence[Written | None] | None = None,
    banned: frozenset[int] = frozenset(),
) -> list[Written]:
    """Greedy decoding of a batch of token-id prompts; each row's tokens, ending at its first end of
    sequence, or once ``done(row, tokens)`` says so, or once it holds ``max_new_tokens``.
    ``line_penalty`` comes off a token's logit for each time the row has written it since its last
    token in ``newlines`` (``repotune.decoding``). ``begun``: what each row's completion already
    holds (None: nothing), the last tokens of its prompt (a line decoded again, ``complete_lines``):
    they count for the penalty, ``done`` and ``max_new_tokens``, and start the row's ``Written``.
    ``banned``: tokens never written (``ban_tokens``; ``complete_lines`` bans the file header's,
    ``banned_token_ids``), as ``repotune serve`` bans them.

    What ``model.generate`` does greedily, with two savings where a CPU's arithmetic is the limit. The
    prompts are read (the prefill, most of evaluation's time) one at a time when ``prefill_alone``,
    so no padding is computed; their caches are then left-padded into one batch to decode together,
    where rows do share the cost of reading the weights, in layers with room for ``max_new_tokens``
    (``repotune.roomy_cache``: a token is written in place, not the cache copied). And a row that has
    finished leaves the batch (``generate`` carries it to the end, writing padding): one long line no
    longer keeps every row decoding. The attention mask hides the padding and each row's positions
    count from its own first token, as they would alone.

    ``prefixes``: prompts read alone start from the cache of the earlier prompt that shares the most
    tokens with them (``PrefixCache.borrow``), and are kept there in turn; the logits are those of the
    prompt read whole, up to the rounding of the matrix products.
    """
    import torch

    device = model.device
    last_only = last_logit_only(model)
    # A cache other than plain keys and values per layer (a sliding window) is not padded: read together.
    alone = prefill_alone and plain_cache(model)
    groups = [[row] for row in range(len(prompts))] if alone else [list(range(len(prompts)))]
    option = cache_argument(model)
    kept = prefixes if alone else None
    caches, masks, logits = [], [], []
    for group in groups:
        width = max(len(prompts[row]) for row in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for line, row in enumerate(group):
            if not prompts[row]:
                raise RepotuneError("an empty prompt has nothing to continue")
            ids[line, width - len(prompts[row]) :] = torch.tensor(prompts[row], dtype=torch.long)
            mask[line, width - len(prompts[row]) :] = 1
        positions = _positions(mask)
        # A prompt read alone starts from what an earlier prompt's cache holds of it, and reads the rest.
        past, start = kept.borrow(prompts[group[0]]) if kept is not None else (None, 0)
        options = {option: past} if past is not None else {}
        ids, mask, positions = ids[:, start:].to(device), mask.to(device), positions[:, start:].to(device)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        **options, **last_only)  # fmt: skip
        caches.append(getattr(out, option))
        if kept is not None:
            kept.keep(caches[-1], prompts[group[0]])
        masks.append(mask)
        logits.append(out.logits[:, -1, :])
    # Rows read alone are copied into one batch, so that the caches kept for later prompts stay as read.
    cache, mask = left_padded(caches, masks, room=max_new_tokens) if alone else (caches[0], masks[0])
    rows = [
        Written([], [], [], [])
        if b is None
        else Written(list(b.tokens), list(b.margins), list(b.runners), list(b.logprobs))
        for b in (begun or [None] * len(prompts))
    ]
    live = list(range(len(prompts)))
    scores, following = torch.cat(logits), None
    positions = _positions(mask)[:, -1:]
    stops = frozenset(eos)
    for step in range(max_new_tokens):
        if step:
            with torch.no_grad():
                out = model(input_ids=following[:, None], attention_mask=mask, position_ids=positions,
                            use_cache=True, **{option: cache}, **last_only)  # fmt: skip
            scores = out.logits[:, -1, :]
        scores = penalize_lines(scores, [rows[row].tokens for row in live], newlines, line_penalty)
        scores = ban_tokens(scores, banned)
        following = scores.argmax(dim=-1)
        margins, runners = runner_up(scores, following, stops)
        chosen = chosen_logprobs(scores, following)
        going = []
        for line, (row, token) in enumerate(zip(live, following.tolist(), strict=True)):
            rows[row].add(token, margins[line], runners[line], chosen[line])
            tokens = rows[row].tokens
            if token not in stops and not done(row, tokens) and len(tokens) < max_new_tokens:
                going.append(line)
        if not going:
            break
        if len(going) < len(live):
            keep = torch.tensor(going, device=device)
            cache.batch_select_indices(keep)
            mask, following, positions = mask[keep], following[keep], positions[keep]
            live = [live[line] for line in going]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        positions = positions + 1
    return rows


@dataclass
class Written:
    """What greedy decoding wrote for one prompt, step by step."""

    tokens: list[int]
    margins: list[float]
    """How far each token's logit (penalties taken off) was above the runner-up's (``runner_up``)."""
    runners: list[int]
    """The runner-up of each step."""
    logprobs: list[float]
    """The log probability of each token, of the same logits (``chosen_logprobs``)."""

    def add(self, token: int, margin: float, runner: int, logprob: float) -> None:
        self.tokens.append(token)
        self.margins.append(margin)
        self.runners.append(runner)
        self.logprobs.append(logprob)


def _positions(mask: Any) -> Any:
    """Position ids of left-padded rows, as ``generate`` derives them: each row counts from its first
    token (padding gets 1, which the mask hides)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


PADDING_SHARE = 0.25
"""Most of a generation batch's prompt tokens that may be padding where prompts are read together (off
a CPU): there padding is computed like text."""


def length_batches(
    lengths: Sequence[int], batch_size: int, max_padding: int | None = None
) -> list[list[int]]:
    """Indices of prompts grouped for decoding together, the longest first: up to ``batch_size`` rows, and a
    batch closes before a prompt so short that padding it to the batch's width would make padding
    more than ``PADDING_SHARE`` of the batch, or, given ``max_padding``, more than that many tokens.

    A decoding step reads every weight once however many rows it carries, so on a CPU (bound by
    memory bandwidth) fewer, larger batches take fewer steps (benchmarks/evaluate_speed.py). Prompts
    read alone (on a CPU) pay for padding only in decoding, where each step attends over it too:
    ``padding_budget`` gives the most worth paying there.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        if batch is not None and len(batch) < batch_size:
            rows = len(batch) + 1
            padding = lengths[batch[0]] * rows - sum(lengths[i] for i in batch) - lengths[index]
            if padding <= (PADDING_SHARE * lengths[batch[0]] * rows if max_padding is None else max_padding):
                batch.append(index)
                continue
        batches.append([index])
    return batches


def padding_budget(model: Any) -> int | None:
    """Padding tokens whose keys and values take as many bytes as the model's weights: a decoding step
    reads both, so a batch padded by more would spend longer on its padding than a batch of its own
    spends on reading the weights again (SmolLM2-135M: about 11,700). None where the model's config
    does not give the size of its cache."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    layers = getattr(config, "num_hidden_layers", None)
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads
        if getattr(config, "hidden_size", None) and heads
        else None
    )
    if not (heads and layers and head_dim):
        return None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(weights // (2 * layers * heads * head_dim * next(model.parameters()).element_size()))


def context_limit(model: Any) -> int:
    """Tokens the model can attend to (its position embeddings), or 2,048 where it does not say."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` of text ``text`` go through the model; those from ``score_from`` on that
    are in ``scored`` count."""

    text: int
    begin: int
    end: int
    score_from: int


def tokenized(texts: Sequence[ScoredText], tokenizer: Any) -> list[tuple[list[int], list[bool]]]:
    """Each text with its file header as token ids, and which tokens are scored (they touch a span).

    The header is markup (``<filename>`` is a special token where the tokenizer has one); the text is
    text: a literal ``<fim_prefix>`` in a file is encoded as the characters it is
    (``split_special_tokens``), not as the sentinel. A candidate's tokenizer is its base's plus the
    FIM tokens training added, so base and candidate then read a file as the same tokens, cut into
    the same windows, and their perplexities pair up window by window. Parsed as markup, one such
    literal in a file (this repository has hundreds) shifted every window after it, and the two models
    were scored on different code.
    """
    result = []
    for item in texts:
        header = file_header(item.path, tokenizer)
        head = list(tokenizer(header, add_special_tokens=False).input_ids) if header else []
        try:
            encoding = tokenizer(
                item.text,
                add_special_tokens=False,
                split_special_tokens=True,
                return_offsets_mapping=item.spans is not None,
            )
        except NotImplementedError as err:  # slow (Python) tokenizers have no offsets
            raise RepotuneError(
                "scoring added lines needs a fast tokenizer (character offsets); this model's has none"
            ) from err
        ids = head + list(encoding.input_ids)
        if item.spans is None:
            scored = [True] * len(ids)
        else:
            scored = [False] * len(head) + [
                any(start < span_end and end > span_start for span_start, span_end in item.spans)
                for start, end in encoding.offset_mapping
            ]
        result.append((ids, scored))
    return result


def windows(
    tokens: Sequence[tuple[list[int], list[bool]]], seq_len: int, max_windows: int, seed: int
) -> list[Window]:
    """The windows that score at least one token, at most ``max_windows`` of them (a seeded draw)."""
    stride = max(1, seq_len // 2)
    found = []
    for number, (ids, scored) in enumerate(tokens):
        begin, previous_end = 0, 0
        while begin < len(ids):
            end = min(begin + seq_len, len(ids))
            score_from = max(previous_end, begin + 1)  # a window's first token has nothing to predict it
            if any(scored[score_from:end]):
                found.append(Window(number, begin, end, score_from))
            if end == len(ids):
                break
            previous_end, begin = end, begin + stride
    if len(found) > max_windows:
        chosen = sorted(random.Random(seed).sample(range(len(found)), max_windows))
        found = [found[i] for i in chosen]
    return found


def window_nll(
    model: Any,
    tokens: Sequence[tuple[list[int], list[bool]]],
    chosen: Sequence[Window],
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, scored tokens) of each window, ``batch_size`` at a time.

    Rows are right-padded: causal attention never looks ahead, so padding after a row's tokens changes
    nothing for them, and the positions count from the row's first token as they would alone.
    """
    import torch

    device = model.device
    results: list[tuple[float, int]] = []
    for first in range(0, len(chosen), batch_size):
        batch = chosen[first : first + batch_size]
        width = max(w.end - w.begin for w in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, window in enumerate(batch):
            text_ids, scored = tokens[window.text]
            span = text_ids[window.begin : window.end]
            ids[row, : len(span)] = torch.tensor(span, dtype=torch.long)
            mask[row, : len(span)] = 1
            for position in range(window.score_from, window.end):
                if scored[position]:
                    labels[row, position - window.begin] = text_ids[position]
        # Logits only where some row scores the next token: the output layer (a 49k-token vocabulary
        # on SmolLM2) is a fifth of the forward pass, and half of an overlapping window is not scored.
        target = labels[:, 1:]
        keep = (target != -100).any(dim=0).nonzero().flatten()
        options: dict[str, Any] = {"logits_to_keep": keep.to(device)} if keeps_logits(model) else {}
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **options
            ).logits
        if not options:
            logits = logits[:, keep]
        nll = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), target[:, keep].to(device), ignore_index=-100, reduction="none"
        ).sum(dim=1)
        counts = (target != -100).sum(dim=1)
        results.extend((float(n), int(c)) for n, c in zip(nll.tolist(), counts.tolist(), strict=True))
        if progress is not None:
            progress.advance(len(batch))
    return results
