"""The line repeat penalty: what the evaluate stage scores with and ``repotune serve`` decodes with by
default, so that what is served is what was scored.

Small code models fall into loops inside a line: ``assert out.shape == (1, 12, 12, 12, 12, ...`` or a
comment that says the same clause again until the token limit. OpenAI's ``frequency_penalty`` breaks
such loops, but its counts grow over the whole completion, so over a long completion of several lines
it would weigh more and more on the tokens every line of code repeats (a newline and its indentation,
brackets, commas, ``self``). This penalty counts a token only since the last token that holds a
newline: it breaks a loop within a line and leaves the next line as free as the first.

Measured on the demo's own held-out lines (100 lines the repository added after its training cut,
greedy, first line scored) with the demo's base model and its fine-tuned candidate, a penalty of 1.0
per earlier use raised line edit similarity from 0.288 to 0.303 (base) and from 0.315 to 0.326
(candidate), and the base model's answers that loop fell from 7 to 2. Over three lines (64 tokens) it
and ``frequency_penalty`` 1.0 scored alike; longer completions were not measured (README,
``repotune serve``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from rapidfuzz.distance import Levenshtein

from repotune.errors import RepotuneError

LINE_REPEAT_PENALTY = 1.0
"""Subtracted from a token's logit once for each time the completion has written it since its last
newline; 0 turns the penalty off."""
MAX_LINE_REPEAT_PENALTY = 2.0
"""The largest penalty taken, as OpenAI's penalties go up to 2."""


def check_line_penalty(value: object) -> None:
    """Refuse a line repeat penalty that is not a number from 0 to ``MAX_LINE_REPEAT_PENALTY``: the one
    check for the evaluate stage's setting and the server's."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 <= value <= MAX_LINE_REPEAT_PENALTY:
        raise RepotuneError(
            f"line_repeat_penalty must be a number from 0 to {MAX_LINE_REPEAT_PENALTY:g}, got {value!r}"
        )


@cache
def newline_tokens(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens whose text holds a newline (the counts start again after one), computed once
    per tokenizer."""
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    return frozenset(i for i, text in enumerate(texts) if "\n" in text)


def since_newline(tokens: Sequence[int], newlines: frozenset[int]) -> Sequence[int]:
    """The tokens after the last one that holds a newline (all of them when none does)."""
    for at in range(len(tokens) - 1, -1, -1):
        if tokens[at] in newlines:
            return tokens[at + 1 :]
    return tokens


def penalize_lines(
    logits: Any, written: Sequence[Sequence[int]], newlines: frozenset[int], penalty: float | Sequence[float]
) -> Any:
    """``logits`` (one row per completion) less ``penalty`` (one for all rows, or one per row) for each
    time a row has written a token on its current line; a new tensor, or ``logits`` itself when
    nothing is penalized."""
    import torch

    penalties = [penalty] * len(written) if isinstance(penalty, int | float) else list(penalty)
    penalized = None
    for row, (tokens, amount) in enumerate(zip(written, penalties, strict=True)):
        line = since_newline(tokens, newlines) if amount else ()
        if not line:
            continue
        if penalized is None:
            penalized = logits.clone()
        ids = torch.tensor(list(line), dtype=torch.long, device=logits.device)
        amounts = torch.full(ids.shape, -float(amount), dtype=logits.dtype, device=logits.device)
        penalized[row].index_add_(0, ids, amounts)
    return logits if penalized is None else penalized


class LinePenaltyProcessor:
    """A transformers ``LogitsProcessor`` for the line repeat penalty (``penalize_lines``), row by
    row: a row's completion is its tokens from column ``starts[row]`` on."""

    def __init__(self, penalties: Sequence[float], starts: Sequence[int], newlines: frozenset[int]) -> None:
        self.penalties, self.starts, self.newlines = list(penalties), list(starts), newlines

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        written = [ids[start:] for ids, start in zip(input_ids.tolist(), self.starts, strict=True)]
        return penalize_lines(scores, written, self.newlines, self.penalties)


def ban_tokens(logits: Any, banned: frozenset[int]) -> Any:
    """``logits`` with the ``banned`` tokens' set to minus infinity, so that neither greedy decoding nor
    sampling can pick them (``repotune.data.transforms.banned_token_ids``); a new tensor, or ``logits``
    itself when nothing is banned. What transformers' ``suppress_tokens`` does in ``generate``."""
    if not banned:
        return logits
    import torch

    banned_ids = torch.tensor(sorted(banned), dtype=torch.long, device=logits.device)
    return logits.index_fill(-1, banned_ids, float("-inf"))


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
"""End-of-turn tokens of common chat templates: a completion stops on them as on EOS."""


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Tokens that end a completion: the model's EOS (its generation config), the tokenizer's (training
    appends it to every example) and the chat end-of-turn tokens the tokenizer has. The one rule of the
    evaluate stage, ``repotune serve`` and the MLflow model, so that each stops where the others do."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    ids.discard(None)
    if not ids:
        raise RepotuneError("the model's tokenizer has no end-of-sequence token to stop generation at")
    return frozenset(ids)


def suppressed_token_ids(tokenizer: Any, stops: Iterable[int]) -> list[int]:
    """The tokens a completion never decodes (``repotune.data.transforms.banned_token_ids``) that do not
    also end one, sorted (``generate``'s ``suppress_tokens`` takes a list)."""
    from repotune.data.transforms import banned_token_ids

    return sorted(banned_token_ids(tokenizer) - frozenset(stops))


# Writing the line above again. Greedy decoding of small code models copies the line above the cursor
# (2.5 to 4% of the demo's held-out lines at 200 samples, verbatim or one word off: an import line, a
# ``print``, an item of a list), mostly where the line to write starts like it (``from x import b``
# under ``from x import a``) and the model, having the right start, copies on. A penalty on tokens
# written cannot tell the copy from the right line until its last token. So the copy is decoded again
# instead: from the token of the line that won by the smallest margin over its runner-up, with the
# runner-up in its place, greedy after it. Continue's autocomplete drops a completion that rewrites the
# line above (its ``rewritesLineAbove``), so a copy shows the user nothing; the line decoded again is
# kept only if it is neither blank nor a copy too. Where it is (4 of 13 copies at 200 lines; the
# runner-up can start the same copy over: ``"".join`` in place of ``" ".join`` under a ``"".join``),
# the next least certain token is tried, up to ``RETRIES`` of them, and the first answer stands only
# when none gives another line. The evaluate stage scores so (``retry_line_above``), and ``repotune
# serve`` decodes so by default. No copy was left at those 200 lines, and line exact match and edit
# similarity stayed where they were (``benchmarks/line_above.py``, benchmarks/README.md).

RETRIES = 3
"""How many of a copied line's tokens, least certain first, it is decoded again from before its first
answer stands."""


def runner_up(
    scores: Any, chosen: Any, refused: frozenset[int] = frozenset()
) -> tuple[list[float], list[int]]:
    """Per row of ``scores`` (the logits a token was chosen from, after every penalty): how far the
    chosen token ``chosen[row]`` is above the runner-up, and the runner-up. A runner-up in ``refused``
    (an end of sequence: decoding again from it would write nothing) gives an infinite margin, so that
    its step is never the one decoded again."""
    best = scores.gather(1, chosen[:, None])[:, 0]
    second = scores.scatter(1, chosen[:, None], float("-inf")).max(dim=-1)
    margins = (best - second.values).tolist()
    runners = second.indices.tolist()
    return [math.inf if r in refused else m for m, r in zip(margins, runners, strict=True)], runners


DECODE_CONTEXT = 8
"""Tokens decoded before each of a block's own (``decoded_ends``), so that what a decoder does where
tokens meet (a leading space dropped at the start of a text, bytes of one character split across
tokens, spaces cleaned up before punctuation) sees what it sees in the whole text."""


def decoded_ends(tokens: Sequence[int], tokenizer: Any, *, skip_special_tokens: bool = True) -> list[int]:
    """Per step, how many characters ``tokens`` up to that step's decode to (special tokens skipped,
    unless ``skip_special_tokens`` is false).

    Decoding every prefix whole takes time quadratic in the tokens (0.43 s for 2,000 tokens of a
    prompt scored with ``echo`` on a CPU, on the model's worker thread). So the steps go in blocks of
    about twice the square root of their count: a block's start is decoded whole, once; each of its
    steps is the start's length plus what decoding from ``DECODE_CONTEXT`` tokens before the block
    adds up to that step. Where the block's last step disagrees with its end decoded whole (a decoder
    whose joins reach further back), the block is decoded prefix by prefix instead. Exact for the
    tokenizers tested (byte-level BPE, SentencePiece's metaspace, WordPiece with its spaces cleaned
    up); ``benchmarks/decoded_ends.py`` measures both ways.
    """
    size = max(64, 2 * math.isqrt(len(tokens)))
    ends: list[int] = []
    start = 0  # characters the tokens before the block decode to
    for first in range(0, len(tokens), size):
        last = min(len(tokens), first + size)
        context = max(0, first - DECODE_CONTEXT)
        before = _decoded_length(tokens[context:first], tokenizer, skip_special_tokens)
        block = [
            start + _decoded_length(tokens[context : step + 1], tokenizer, skip_special_tokens) - before
            for step in range(first, last)
        ]
        end = _decoded_length(tokens[:last], tokenizer, skip_special_tokens)
        if block[-1] != end:
            block = prefix_ends(
                tokens, tokenizer, range(first, last), skip_special_tokens=skip_special_tokens
            )
        ends.extend(block)
        start = end
    return ends


def prefix_ends(
    tokens: Sequence[int], tokenizer: Any, steps: Iterable[int], *, skip_special_tokens: bool = True
) -> list[int]:
    """``decoded_ends`` at ``steps``, each prefix decoded whole: what ``decoded_ends`` falls back to
    and is measured against."""
    return [_decoded_length(tokens[: step + 1], tokenizer, skip_special_tokens) for step in steps]


def _decoded_length(tokens: Sequence[int], tokenizer: Any, skip_special_tokens: bool) -> int:
    return len(tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)) if tokens else 0


def span_steps(ends: Sequence[int], span: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The steps whose token writes a character of ``span`` (``ends``: ``decoded_ends`` of the tokens),
    each with the first and the end character of ``span`` it writes."""
    found, begin = [], 0
    for step, end in enumerate(ends):
        first, last = max(begin, span[0]), min(end, span[1])
        if first < last:
            found.append((step, first, last))
        begin = max(begin, end)
    return found


def least_certain(
    tokens: Sequence[int],
    margins: Sequence[float],
    tokenizer: Any,
    span: tuple[int, int],
    count: int = RETRIES,
) -> list[int]:
    """The steps (indexes into ``tokens``) to decode again from, the first tried first: among the
    tokens that write a non-blank character of ``span`` (characters of ``tokens`` decoded, special
    tokens skipped), the ``count`` chosen by the smallest finite margins, smallest first (the earlier
    step where two are equal); empty when there is none."""
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    steps = [
        step
        for step, first, last in span_steps(decoded_ends(tokens, tokenizer), span)
        if text[first:last].strip() and math.isfinite(margins[step])
    ]
    return sorted(steps, key=lambda step: (margins[step], step))[:count]


def answer_span(generated: str, *, after_newline: bool) -> tuple[int, int] | None:
    """Where ``answer_line`` is in ``generated``: its first and its end character (before its
    newline); None when there is no non-blank line."""
    at = 0
    if after_newline:
        at = generated.find("\n") + 1
        if not at:
            return None
    while True:
        end = generated.find("\n", at)
        end = len(generated) if end < 0 else end
        if generated[at:end].strip():
            return at, end
        if end == len(generated):
            return None
        at = end + 1


def line_above(before: str) -> str:
    """The last non-blank line of ``before`` (the code above the cursor); ``""`` when there is none."""
    return next((line for line in reversed(before.split("\n")) if line.strip()), "")


def rewrites_line_above(answer: str, before: str) -> bool:
    """Whether ``answer`` writes again the last non-blank line of ``before`` (the code above the
    cursor), give or take one character in ten: Continue's autocomplete drops such a completion
    (``rewritesLineAbove`` in its postprocessing), so a user of it is shown nothing. As there, a line
    of four characters or fewer (a ``)``, an ``end``) is not judged."""
    above = line_above(before)
    if len(above) <= 4 or len(answer) <= 4 or not answer.strip():
        return False
    return Levenshtein.distance(above.strip(), answer.strip()) / len(answer.strip()) < 0.1


# How sure the model was of a line. An editor shows a completion or nothing, and a wrong one costs the
# user a read; greedy decoding knows, token by token, how much probability it gave what it wrote. The
# geometric mean of those probabilities over the tokens of the line (its newline included: a model
# that would rather have gone on is less sure the line is whole) ranks right lines above wrong ones:
# on the quality benchmark's itsdangerous and attrs (400 lines the next releases added), a right line
# of the demo recipe's candidate was more confident than a wrong one 94% of the time, and its most
# confident half held every right line, exact match 0.235 against 0.117 over all lines
# (``benchmarks/quality.py``, README). The smallest margin over a runner-up, tried on the same lines,
# ranked as well on attrs (0.91 against 0.90) and worse on itsdangerous (0.91 against 0.97).


def check_confidence(value: object, name: str) -> None:
    """Refuse a confidence threshold that is not a number from 0 to 1."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 <= value <= 1:
        raise RepotuneError(f"{name} must be a number from 0 to 1, got {value!r}")


def chosen_logprobs(scores: Any, chosen: Any) -> list[float]:
    """Per row of ``scores`` (the logits a token was chosen from, after every penalty), the log
    probability of the chosen token ``chosen[row]``, in float32 whatever the logits' type."""
    import torch

    return torch.log_softmax(scores.float(), dim=-1).gather(1, chosen[:, None])[:, 0].tolist()


def line_confidence(logprobs: Sequence[float], ends: Sequence[int], span: tuple[int, int]) -> float:
    """The geometric mean of the probabilities of the tokens that write ``span`` and the character after
    it, its newline (``ends``: ``decoded_ends`` of the tokens; ``logprobs[step]``: the log probability
    of the token of that step, ``chosen_logprobs``); 0.0 when no token writes it."""
    steps = [step for step, _, _ in span_steps(ends, (span[0], span[1] + 1))]
    if not steps:
        return 0.0
    return math.exp(sum(logprobs[step] for step in steps) / len(steps))
