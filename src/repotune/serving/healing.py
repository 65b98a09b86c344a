"""Prompts that end in whitespace: the whitespace is held back and the model writes it.

An editor asks for a completion where the cursor is, and on a fresh line the cursor sits after the
indentation: the prompt ends in ``"\\n        "``. Byte-level BPE tokenizers (GPT-2's, SmolLM2's,
Qwen's, StarCoder's) never end a token of real text there: they write that indentation as
``"\\n       "`` and ``" for"``, the last space joined to the word after it. A prompt tokenized up to the
cursor therefore ends at a boundary the model never saw in training, and it answers with what
usually follows such a token (a new function at column 0, a blank line). This is the problem
"token healing" solves (Microsoft's guidance library, transformers' ``token_healing``); transformers'
version strips trailing whitespace from the prompt, which loses the indentation, so it cannot serve
code.

Here the prompt's trailing whitespace (``split_tail``) is left out of the prompt's tokens, and the first
generated tokens are held to it (``HealingProcessor``): a token is allowed only while its text and what is
left of the held-back whitespace agree (one is a prefix of the other, and a token longer than what is left
goes on with a word, not with more whitespace), so the model writes the indentation with the tokens it
would have used, then the word after it, and no more indentation than the prompt had; where the prompt
ends with a newline, the empty line's indentation is the model's to write (``allowed``). What the client
gets back starts after the held-back text. The evaluate stage does the same for the newline it holds back
(``repotune.evaluate.generate.prompt_ids``).

Only tokenizers that decode a single token to its own text, leading whitespace included, can be
held to text this way (``TokenTexts.supported``); for others (SentencePiece drops the leading space of
a lone token) prompts are tokenized whole, as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_TAIL = re.compile(r"\s+\Z")


def split_tail(text: str) -> tuple[str, str]:
    """``text`` without its trailing whitespace, and that whitespace (``""`` when there is none, or when
    the text is nothing but whitespace: there is no prompt left to hold it back from)."""
    found = _TAIL.search(text)
    if found is None or found.start() == 0:
        return text, ""
    return text[: found.start()], found.group()


class TokenTexts:
    """Each vocabulary token's text, for the tokens that start with whitespace (the only ones a
    whitespace tail can allow), computed once per tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: list[tuple[int, str]] | None = None
        self._singles: frozenset[str] | None = None
        self.supported = _decodes_alone(tokenizer)

    @property
    def texts(self) -> list[tuple[int, str]]:
        if self._texts is None:
            size = len(self.tokenizer)
            decoded = self.tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
            special = set(getattr(self.tokenizer, "all_special_ids", ()) or ())
            self._texts = [
                (i, text) for i, text in enumerate(decoded) if text and text[0].isspace() and i not in special
            ]
        return self._texts

    def writable(self, tail: str) -> str:
        """The end of ``tail`` (a prompt's trailing whitespace) that this vocabulary can write: what follows
        the last character no token writes alone. A byte-level vocabulary that never merged the bytes of
        ``"\\u2028"`` or ``"\\u3000"`` writes them a byte at a time, and a lone byte of a character
        decodes to U+FFFD, which agrees with no held-back text: held back, such a character would never
        be written, and the completion would never start. With a token for each character held back,
        some token always agrees with what is left of it (``allowed``)."""
        if self._singles is None:
            self._singles = frozenset(text for _, text in self.texts if len(text) == 1)
        keep = len(tail)
        while keep and tail[keep - 1] in self._singles:
            keep -= 1
        return tail[keep:]


def encode_held_back(text: str, tokenizer: Any, texts: TokenTexts | None) -> tuple[list[int], str]:
    """The tokens of the prompt ``text`` (``encode_prompt``; an empty one starts a document) and the
    trailing whitespace held back from them for the model to write (``""``: none): as much of it as the
    vocabulary can write again (``TokenTexts.writable``), where ``texts`` is given and supported. What
    ``repotune serve`` and the MLflow pyfunc model both encode a plain prompt with."""
    from repotune.data.transforms import document_start, encode_prompt

    if texts is not None and texts.supported:
        tail = texts.writable(split_tail(text)[1])
        if tail:
            return encode_prompt(tokenizer, text[: -len(tail)]), tail
    return encode_prompt(tokenizer, text) or document_start(tokenizer), ""


def agreed(text: str, heal: str) -> int:
    """How many characters ``text`` starts with that agree with ``heal``: where a completion that was
    held to ``heal`` starts after it."""
    same = 0
    while same < min(len(text), len(heal)) and text[same] == heal[same]:
        same += 1
    return same


def _decodes_alone(tokenizer: Any) -> bool:
    """Whether a lone token decodes to its own text, leading whitespace included (byte-level BPE)."""
    try:
        ids = tokenizer("\n    x", add_special_tokens=False)["input_ids"]
        pieces = [tokenizer.decode([i]) for i in ids]
    except Exception:  # a tokenizer that cannot say is treated as one that cannot be held to text
        return False
    return "".join(pieces) == "\n    x"


def allowed(remaining: str, texts: Sequence[tuple[int, str]]) -> list[int]:
    """Tokens that agree with ``remaining``, the held-back text not yet written: the token's text is a
    prefix of it (all of it included), or it is all of it and then a word (the last of the whitespace
    joined to what follows). A token that goes on with more whitespace is not allowed: it would write
    more indentation than the prompt had (``"\\n        "`` for a held-back ``"\\n    "``), and the
    completion would come back indented twice.

    Except after a newline: a prompt that ends with one has the cursor at the start of an empty line,
    whose indentation is still to be written, so a token that writes the newline and then spaces or tabs
    (``"\\n        "``, the token BPE writes a newline and an indentation with) is allowed, as the
    evaluate stage lets the model write the newline it holds back and the line after it. More newlines
    are not: the completion is of the line the cursor is on."""
    at_line_start = remaining.endswith("\n")

    def goes_on(after: str) -> bool:
        return not after[0].isspace() or (at_line_start and after.lstrip(" \t")[:1] not in ("\n", "\r"))

    return [
        i
        for i, text in texts
        if remaining.startswith(text) or (text.startswith(remaining) and goes_on(text[len(remaining) :]))
    ]


class HealingProcessor:
    """A transformers ``LogitsProcessor``: rows with held-back text may only write tokens that agree
    with what is left of it, until it is all written.

    ``heals[row]`` is the text row ``row`` must start with (``""``: unconstrained); its generated tokens
    are those from column ``starts[row]`` on (one column for every row: prompts are left-padded to one
    width; a row that goes on from tokens it wrote before has them at the end of its prompt).
    """

    def __init__(self, heals: Sequence[str], starts: int | Sequence[int], texts: TokenTexts) -> None:
        self.heals = list(heals)
        self.starts = [starts] * len(self.heals) if isinstance(starts, int) else list(starts)
        self.texts = texts

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row, heal in enumerate(self.heals):
            if not heal:
                continue
            written = self.texts.tokenizer.decode(input_ids[row, self.starts[row] :].tolist())
            if len(written) >= len(heal):
                self.heals[row] = ""  # all written: from here on the row is free
                continue
            keep = allowed(heal[len(written) :], self.texts.texts)
            if not keep:  # nothing in the vocabulary agrees: leave the row free rather than stall it
                self.heals[row] = ""
                continue
            mask = torch.full_like(scores[row], float("-inf"))
            mask[keep] = 0.0
            scores[row] = scores[row] + mask
        return scores
