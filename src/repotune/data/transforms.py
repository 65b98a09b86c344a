"""Records become training text here: one small named transform per kind.

Evaluation and serving build their prompts with the ``*_prompt`` functions of this module, which are
the training texts cut where the model's answer starts, so a prompt cannot drift from what the model
was trained on. The formats:

- code and doc files: ``file_header(path)`` and then the file's text. The header is
  ``<filename>PATH\\n`` when the tokenizer has ``<filename>`` as one token (StarCoder, SmolLM2 and their
  kin were pretrained with it), else the plain line ``# File: PATH\\n``, which reads as a comment in
  the ``#``-comment languages and as a heading in Markdown, and costs a handful of tokens anywhere.
- retrieved cross-file context (``context_text``): chunks of other files, each as ``file_header(path)``
  and its lines, most relevant last; it goes in front of a code prompt (``code_prompt``), a FIM prompt
  (before ``<fim_prefix>``) and, with ``example_text(context=...)``, a code training example, so the
  model is trained on the context it is given at inference. ``repotune.retrieval`` chooses the chunks.
- fill-in-the-middle: the model's own FIM tokens where its tokenizer has them (``fim_tokens``:
  Qwen2.5-Coder's ``<|fim_prefix|>``/``<|fim_suffix|>``/``<|fim_middle|>``, which it was pretrained
  with), else StarCoder's ``<fim_prefix>``/``<fim_suffix>``/``<fim_middle>`` (added by
  ``ensure_fim_tokens`` where missing); PSM or SPM order (see ``fim_text``); the file header is part of
  the prefix.
- commits: the diff first, then ``Commit message:`` on its own line, then the message, so the model
  learns to write a message from a diff (``commit_prompt`` is everything up to the message).
- issues and pull requests (GitHub's and Jira's, in one layout: ``repotune.sources.threads``): a
  conversation (``issue_messages``) rendered with the tokenizer's chat template, or as
  ``User:``/``Assistant:`` turns when it has none (``render_chat``).
- wiki pages (Confluence, Notion): like a doc, with the page's breadcrumb (``Space / Parent / Page``)
  on the first line where a doc has its path.
- diagrams: like a doc: the file header, then the components and relations as text.

Every example ends without an end-of-sequence token; ``repotune.data.packing`` appends the
tokenizer's EOS, which is also where generation is expected to stop.

Text is text: the only special tokens in a rendered example or prompt are the ones placed here (the
header's ``<filename>``, the FIM sentinels, a chat template's turns). A special token's name written
out in a file, a commit or a request (a FIM tool's own source writes ``"<fim_prefix>"``) is wrapped by
``literal`` when it is rendered, and ``encode`` reads it as its characters, as the base model was
pretrained to; parsed as the token, it would put a sentinel in the middle of code.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from repotune.errors import RepotuneError
from repotune.records import Kind, Record

# Bump when any rendering below changes, so cached token files made with the old format are not reused.
FORMAT_VERSION = 3  # 2: a tokenizer's own FIM tokens (fim_tokens); 3: special tokens in text (literal)

FIM_TOKENS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>")
FILENAME_TOKEN = "<filename>"
PLAIN_HEADER = "# File: {path}\n"
COMMIT_MESSAGE_LABEL = "Commit message:\n"
LITERAL = "\uffff"
"""Wraps a special token's name written in text (``literal``) so that ``encode`` reads it as characters:
U+FFFF is a Unicode noncharacter, never part of real text."""


@dataclass(frozen=True)
class FimTokens:
    """The three fill-in-the-middle sentinels, StarCoder's names by default."""

    prefix: str = FIM_TOKENS[0]
    middle: str = FIM_TOKENS[1]
    suffix: str = FIM_TOKENS[2]

    @property
    def names(self) -> tuple[str, str, str]:
        """(prefix, middle, suffix), the order ``ensure_fim_tokens`` returns their ids in."""
        return self.prefix, self.middle, self.suffix


FIM = FimTokens()
FIM_FAMILIES = (FIM, FimTokens("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"))
"""FIM sentinels models are pretrained with: StarCoder's (StarCoder 1 and 2, SantaCoder's successors,
and what ``ensure_fim_tokens`` adds), and Qwen2.5-Coder's (also CodeGemma's and Granite's), the ones
Continue's autocomplete templates write for those models."""


class FimOrder(StrEnum):
    PSM = "psm"  # prefix, suffix, middle
    SPM = "spm"  # suffix, prefix, middle


@dataclass(frozen=True)
class TransformConfig:
    """How records become training text."""

    fim_rate: float = 0.5
    """Share of code files (0 to 1) turned into a fill-in-the-middle example instead of plain file text."""

    spm_rate: float = 0.5
    """Of the fill-in-the-middle examples, the share (0 to 1) in suffix-prefix-middle order rather than
    prefix-suffix-middle."""

    seed: int = 0
    """Seeds each record's own random choices (FIM or not, cut points, order), with the record's id."""

    fim_window_chars: int | None = None
    """None: a FIM example is the whole file cut at two random characters (``fim_split``). A number:
    the example is a window of the file around a short middle, the rest of a line or a few whole
    lines (``fim_span_split``), with up to this many characters of the file on each side; sized to
    fit one packed block, so the sentinels, the context and the middle are trained together."""

    def __post_init__(self) -> None:
        if self.fim_window_chars is not None and (
            isinstance(self.fim_window_chars, bool)
            or not isinstance(self.fim_window_chars, int)
            or self.fim_window_chars < 1
        ):
            raise RepotuneError(
                f"fim_window_chars must be a whole number of at least 1, got {self.fim_window_chars!r}"
            )
        for name in ("fim_rate", "spm_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise RepotuneError(f"{name} must be a number from 0 to 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RepotuneError(f"seed must be an integer, got {self.seed!r}")


def record_rng(record: Record, seed: int) -> random.Random:
    """The random source for one record: the same record and seed give the same example in any order.

    A string seed goes through SHA-512 in ``random.Random``, so this does not depend on
    ``PYTHONHASHSEED`` and is the same in every process.
    """
    return random.Random(f"{seed}:{record.id}")


def _is_single_token(tokenizer: Any, text: str) -> bool:
    # A token can sit in the vocabulary and still not come out of encoding as one piece (when it is not
    # an added token the pre-tokenizer keeps whole), so ask the encoder rather than the vocabulary.
    return len(tokenizer.encode(text, add_special_tokens=False)) == 1


def fim_tokens(tokenizer: Any | None) -> FimTokens:
    """The FIM sentinels of ``tokenizer``: the first of ``FIM_FAMILIES`` it has, each as one token (a
    model's own, which it was pretrained to fill with), else StarCoder's (``ensure_fim_tokens`` adds them)."""
    if tokenizer is not None:
        for family in FIM_FAMILIES:
            if all(_is_single_token(tokenizer, token) for token in family.names):
                return family
    return FIM


def ensure_fim_tokens(tokenizer: Any) -> list[int]:
    """Add StarCoder's FIM tokens to ``tokenizer`` as special tokens where it has no FIM tokens of its own
    (``fim_tokens``); return the ids of the tokens it fills with.

    The ids come in (prefix, middle, suffix) order. When tokens were added, the vocabulary
    grew: the caller must ``model.resize_token_embeddings(len(tokenizer))`` and train the new rows (their
    fresh embeddings mean nothing yet), e.g. with PEFT's ``LoraConfig(trainable_token_indices=...)``, or
    by training the embedding and output layers in full fine-tuning. The tokenizer saved with the model
    then carries the tokens to evaluation and serving.
    """
    if not has_fim_tokens(tokenizer):
        missing = [token for token in FIM_TOKENS if not _is_single_token(tokenizer, token)]
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return [tokenizer.convert_tokens_to_ids(token) for token in fim_tokens(tokenizer).names]


def has_fim_tokens(tokenizer: Any) -> bool:
    return any(all(_is_single_token(tokenizer, token) for token in family.names) for family in FIM_FAMILIES)


def banned_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids a completion never decodes: the file header's ``<filename>``, where ``tokenizer`` reads it
    as one token (empty otherwise).

    Retrieved context is ``<filename>`` blocks in front of the prompt, and a small model given them now
    and then starts a file of its own: it answers a line with ``<filename>`` and a path (a header, never
    code; issue 15's format check counts it), or writes the header before its answer's line and
    answers with a line of the file it made up. The FIM sentinels are left free: decoding drops them
    from an answer's text, and banning them too changed no answer on the quality benchmark's
    itsdangerous (200 lines).
    """
    return frozenset(
        {tokenizer.convert_tokens_to_ids(FILENAME_TOKEN)}
        if _is_single_token(tokenizer, FILENAME_TOKEN)
        else ()
    )


def _special_texts(tokenizer: Any) -> list[str]:
    """The strings ``tokenizer`` reads as one special token, longest first."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return sorted({token.content for token in decoder.values() if token.special}, key=len, reverse=True)


def literal(text: str, tokenizer: Any | None) -> str:
    """``text`` (a file's content, a request's code) with each special token's name in it wrapped in
    ``LITERAL``, so that ``encode`` reads it as characters; ``text`` itself where it writes none (or
    without a tokenizer, whose plain rendering has no special tokens)."""
    text = text.replace(LITERAL, "") if LITERAL in text else text
    if tokenizer is None:
        return text
    found = [special for special in _special_texts(tokenizer) if special in text]
    if not found:
        return text
    pattern = re.compile("|".join(re.escape(special) for special in found))
    return pattern.sub(lambda match: f"{LITERAL}{match.group(0)}{LITERAL}", text)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered ``text``, no special tokens added: what ``tokenizer`` gives, except that a
    special token's name that ``literal`` wrapped is encoded as its characters.

    Text that ``literal`` left alone (nearly all) is encoded by the tokenizer in one call. Otherwise
    the special tokens placed by rendering split the text, as the tokenizer itself splits it, and each
    stretch between them, the wrapped names included, is encoded with ``split_special_tokens``.
    """
    if LITERAL not in text:
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    specials = _special_texts(tokenizer)
    markup = (
        re.compile("(" + "|".join(re.escape(special) for special in specials) + ")") if specials else None
    )
    ids: list[int] = []
    stretch: list[str] = []

    def flush() -> None:
        if stretch:
            joined = "".join(stretch)
            ids.extend(tokenizer(joined, add_special_tokens=False, split_special_tokens=True).input_ids)
            stretch.clear()

    for number, part in enumerate(text.split(LITERAL)):
        if number % 2 or markup is None:  # a wrapped name, or text with no special token to find
            stretch.append(part)
            continue
        for index, piece in enumerate(markup.split(part)):
            if index % 2:
                flush()
                ids.append(tokenizer.convert_tokens_to_ids(piece))
            else:
                stretch.append(piece)
    flush()
    return ids


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt, tokenized as ``repotune.data.packing`` tokenizes training text: no special
    tokens added, except a leading BOS for tokenizers that add one."""
    ids = encode(tokenizer, text)
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def document_start(tokenizer: Any) -> list[int]:
    """The ids of an empty text prompt (say a gap at the very start of a file, answered from its prefix
    alone): the token a document follows in training, where examples are packed one after another,
    each ended by EOS (``repotune.data.packing``), as OpenAI's models start an empty prompt from
    ``<|endoftext|>``; BOS where the tokenizer has no EOS (``encode_prompt`` already gives BOS to
    tokenizers that add it). Empty when it has neither: the request is then refused."""
    start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    return [] if start is None else [start]


def file_header(path: str | None, tokenizer: Any | None = None) -> str:
    """The line that precedes a file's text: ``<filename>PATH\\n`` if the tokenizer knows the token.

    Without a tokenizer, or with one that would split ``<filename>`` into pieces, it is ``# File: PATH\\n``.
    ``None`` (no path) gives no header.
    """
    if path is None:
        return ""
    if tokenizer is not None and _is_single_token(tokenizer, FILENAME_TOKEN):
        return f"{FILENAME_TOKEN}{path}\n"
    return PLAIN_HEADER.format(path=path)


ContextFn = Callable[[Record, str | None, str | None], str]
"""Retrieved context for a code training example: called with the record and, for a FIM example, the
prefix and suffix around the middle the model learns to write (both ``None`` when the example is the
whole file); returns ``context_text`` output, or ``""`` for no context."""


def context_text(snippets: Iterable[tuple[str, str]], tokenizer: Any | None = None) -> str:
    """Cross-file context: each ``(path, text)`` as ``file_header(path)`` and the text, newline-ended.

    Snippets appear in the order given; callers put the most relevant last, next to the code being
    written. Training examples, evaluation prompts and served prompts all render context here.
    """
    return "".join(
        file_header(path, tokenizer) + literal(text if text.endswith("\n") else text + "\n", tokenizer)
        for path, text in snippets
    )


def code_prompt(
    prefix: str, *, path: str | None = None, tokenizer: Any | None = None, context: str = ""
) -> str:
    """The inference prompt for continuing the file at ``path`` after ``prefix``: ``context`` (from
    ``context_text``), the file header, then the prefix; the code example (``code_text``) cut at the
    cursor."""
    return context + file_header(path, tokenizer) + literal(prefix, tokenizer)


def code_text(record: Record, tokenizer: Any | None = None) -> str:
    """A code file as training text: its header, then its content unchanged."""
    return file_header(record.file_path, tokenizer) + literal(record.content, tokenizer)


def doc_text(record: Record, tokenizer: Any | None = None) -> str:
    """A documentation file as training text; the same shape as code, but never cut for FIM."""
    return file_header(record.file_path, tokenizer) + literal(record.content, tokenizer)


def wiki_text(record: Record, tokenizer: Any | None = None) -> str:
    """A wiki page as training text: its breadcrumb (``Space / Parent / Page``) line, then its Markdown.

    The breadcrumb does for a page what the path does for a file: it says where the text belongs.
    """
    breadcrumb = " / ".join(str(part) for part in record.meta.get("breadcrumb") or [] if part)
    content = literal(record.content, tokenizer)
    return literal(f"{breadcrumb}\n\n", tokenizer) + content if breadcrumb else content


def diagram_text(record: Record, tokenizer: Any | None = None) -> str:
    """A diagram record as training text: its file header, then its components and relations."""
    return file_header(record.file_path, tokenizer) + literal(record.content, tokenizer)


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Cut ``text`` at two character positions drawn uniformly from 0..len(text), sorted.

    This is StarCoder's split (bigcode-project/Megatron-LM, ``permute`` in gpt_dataset.py): character
    level, so the middle can start or end inside a token or a line, and prefix, middle or suffix may be
    empty. ``prefix + middle + suffix == text`` always.
    """
    first, second = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:first], text[first:second], text[second:]


def fim_span_split(text: str, rng: random.Random, window: int) -> tuple[str, str, str]:
    """Cut ``text`` around a middle of the kind an editor asks for, keeping ``window`` characters a side.

    The middle starts at a random column of a random non-blank line and runs to that line's end (half
    the time), or runs on to the end of one of the next three non-blank lines; the newline after it belongs
    to the suffix, as in evaluation's FIM samples. The prefix is cut back to a line start within
    ``window`` characters, the suffix at ``window`` characters. ``prefix + middle + suffix`` is a
    slice of ``text``; a text with no non-blank line falls back to ``fim_split``.
    """
    lines: list[tuple[int, int]] = []  # (start, end) of each non-blank line, newline excluded
    start = 0
    for line in text.split("\n"):
        if line.strip():
            lines.append((start, start + len(line)))
        start += len(line) + 1
    if not lines:
        return fim_split(text, rng)
    pick = rng.randrange(len(lines))
    line_start, line_end = lines[pick]
    column = line_start + rng.randrange(0, max(1, (line_end - line_start) // 2))
    end = line_end if rng.random() < 0.5 else lines[min(pick + rng.randint(1, 3), len(lines) - 1)][1]
    first = max(0, column - window)
    if first > 0:
        newline = text.find("\n", first, column)
        first = newline + 1 if newline >= 0 else first
    return text[first:column], text[column:end], text[end : end + window]


def fim_text(
    prefix: str, middle: str, suffix: str, order: FimOrder = FimOrder.PSM, tokens: FimTokens = FIM
) -> str:
    """A fill-in-the-middle example; the middle comes last, so the model learns to write it.

    PSM: ``<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>{middle}``.
    SPM: ``<fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}{middle}``.
    With ``tokens`` (``fim_tokens(tokenizer)``), those sentinels instead of StarCoder's.
    """
    # SPM is the SantaCoder/StarCoder variant ("variant 2" of Bavarian et al. 2022, as in
    # bigcode-project/Megatron-LM): both sentinels lead, and the prefix runs straight into the middle, so
    # the middle continues the prefix as ordinary left-to-right text.
    if order is FimOrder.SPM:
        return f"{tokens.prefix}{tokens.suffix}{suffix}{tokens.middle}{prefix}{middle}"
    return f"{tokens.prefix}{prefix}{tokens.suffix}{suffix}{tokens.middle}{middle}"


def fim_prompt(
    prefix: str,
    suffix: str,
    *,
    path: str | None = None,
    tokenizer: Any | None = None,
    order: FimOrder = FimOrder.PSM,
    context: str = "",
) -> str:
    """The inference prompt for filling the gap between ``prefix`` and ``suffix`` of the file at ``path``.

    It is the training example without its middle: the model's completion, up to EOS, is the middle.
    Retrieved ``context`` (from ``context_text``) goes in front of the FIM sentinels, as in training.
    """
    return context + fim_text(
        file_header(path, tokenizer) + literal(prefix, tokenizer),
        "",
        literal(suffix, tokenizer),
        order,
        fim_tokens(tokenizer),
    )


def split_fim_prompt(text: str) -> tuple[str, str] | None:
    """The prefix and suffix of a PSM FIM prompt written out as text in any of ``FIM_FAMILIES``
    (``<fim_prefix>P<fim_suffix>S<fim_middle>``, the template Continue sends a model it does not know;
    ``<|fim_prefix|>…`` for one it takes for Qwen), else None."""
    for tokens in FIM_FAMILIES:
        if not (text.startswith(tokens.prefix) and text.endswith(tokens.middle)):
            continue
        body = text[len(tokens.prefix) : -len(tokens.middle)]
        if body.count(tokens.suffix) != 1 or tokens.prefix in body or tokens.middle in body:
            return None
        prefix, suffix = body.split(tokens.suffix)
        return prefix, suffix
    return None


def fim_example(
    record: Record,
    rng: random.Random,
    *,
    spm_rate: float = 0.5,
    tokenizer: Any | None = None,
    context: ContextFn | None = None,
    window: int | None = None,
) -> str:
    """A code file cut at two random characters (``fim_split``) into a FIM example.

    With ``window``, the cut is ``fim_span_split``'s instead: a short middle in a window of the file.
    SPM with probability ``spm_rate``, else PSM. The file header stays in front of the prefix, so the
    model sees the path before the code in either order, as ``fim_prompt(path=...)`` gives it. With
    ``context``, its text for this prefix and suffix goes in front, as ``fim_prompt(context=...)`` puts it.
    """
    if window is None:
        prefix, middle, suffix = fim_split(record.content, rng)
    else:
        prefix, middle, suffix = fim_span_split(record.content, rng, window)
    order = FimOrder.SPM if rng.random() < spm_rate else FimOrder.PSM
    lead = context(record, prefix, suffix) if context is not None else ""
    header = file_header(record.file_path, tokenizer)
    tokens = fim_tokens(tokenizer)
    if order is FimOrder.SPM:
        # The prefix runs straight into the middle: a name cut in two by the split is whole again there.
        return lead + fim_text(
            header + literal(prefix + middle, tokenizer), "", literal(suffix, tokenizer), order, tokens
        )
    prefix, middle, suffix = (literal(part, tokenizer) for part in (prefix, middle, suffix))
    return lead + fim_text(header + prefix, middle, suffix, order, tokens)


_DIFF_START = re.compile(r"^diff --git ", re.MULTILINE)


def commit_pair(record: Record) -> tuple[str, str]:
    """Split a commit record into (diff, message) at the first line that starts with ``diff --git``.

    A commit without a diff (an empty commit, or one whose diff git did not print) gives ``""`` as diff.
    """
    match = _DIFF_START.search(record.content)
    if match is None:
        return "", record.content.strip()
    return record.content[match.start() :].strip("\n"), record.content[: match.start()].strip()


def commit_prompt(diff: str, tokenizer: Any | None = None) -> str:
    """Everything before the message: the diff, a blank line, ``Commit message:`` and a newline.

    No line of a git diff starts with ``Commit message:`` (each starts with a space, ``+``, ``-``, ``@``,
    ``\\`` or a git header word), so the label cannot be confused with the diff.
    """
    return f"{literal(diff, tokenizer)}\n\n{COMMIT_MESSAGE_LABEL}" if diff else COMMIT_MESSAGE_LABEL


def commit_text(record: Record, tokenizer: Any | None = None) -> str:
    """A commit as training text: ``commit_prompt(diff)`` followed by the message."""
    diff, message = commit_pair(record)
    return commit_prompt(diff, tokenizer) + literal(message, tokenizer)


# The thread layout written by repotune.sources.threads.thread_markdown: `#12` on GitHub, `ENG-7` on Jira.
_THREAD_HEAD = re.compile(
    r"\A# (?P<title>[^\n]*)\n\n(?:Issue|Pull request) (?:#\d+|[A-Z][A-Z0-9_]*-\d+)[^\n]*\n"
    r"Opened by @(?P<author>\S+) on [^\n]*(?:\n\n(?P<body>.*))?\Z",
    re.DOTALL,
)
_COMMENT_HEADING = re.compile(
    r"(?<=\n\n)### @(?P<author>\S+) on [^\n·]*?(?: · review comment on (?P<where>[^\n]+))?$", re.MULTILINE
)


@dataclass
class _Turn:
    role: str
    parts: list[str] = field(default_factory=list)


def issue_messages(record: Record) -> list[dict[str, str]]:
    """An issue or pull request thread as a conversation of ``{"role", "content"}`` messages.

    The opening post (``# title``, a blank line, the body) is the first ``user`` message. Each comment
    is a ``user`` message when its author opened the thread and an ``assistant`` message otherwise:
    the maintainers and other participants answer the person who asked. Consecutive comments with
    the same role are folded into one message (separated by a blank line), since chat templates expect
    alternating turns. Comment authors and dates are left out: the assistant should answer, not sign
    its answers. A review comment keeps where it points (``Review comment on PATH:LINE:``) and its
    diff line. The status line (number, state, labels) is left out: a question asked at inference
    has none. Content that is not in ``thread_text``'s layout is one ``user`` message as it is.

    A body line that itself looks like a comment heading (``### @login on ...`` after a blank line)
    is taken for one; GitHub bodies almost never contain that.
    """
    content = record.content.strip("\n")
    headings = list(_COMMENT_HEADING.finditer(content))
    head_end = headings[0].start() if headings else len(content)
    head = _THREAD_HEAD.match(content[:head_end].strip("\n"))
    if head is None:
        return [{"role": "user", "content": content}]

    opener = record.meta.get("author") or head["author"]
    title = (record.meta.get("title") or head["title"]).strip()
    body = (head["body"] or "").strip()
    turns = [_Turn("user", [f"# {title}\n\n{body}" if body else f"# {title}"])]
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(content)
        text = content[heading.end() : end].strip()
        if heading["where"]:
            text = f"Review comment on {heading['where']}:\n\n{text}".rstrip()
        if not text:
            continue
        role = "user" if heading["author"] == opener else "assistant"
        if turns[-1].role == role:
            turns[-1].parts.append(text)
        else:
            turns.append(_Turn(role, [text]))
    return [{"role": turn.role, "content": "\n\n".join(turn.parts)} for turn in turns]


def render_chat(
    messages: list[dict[str, str]], tokenizer: Any, *, add_generation_prompt: bool = False
) -> str:
    """Messages as text: the tokenizer's chat template if it has one, else ``Role:`` turns.

    The plain form is ``User:\\n{content}`` and ``Assistant:\\n{content}`` turns separated by a blank
    line; ``add_generation_prompt`` appends the opening of an assistant turn, for inference.
    """
    messages = [{**message, "content": literal(message["content"], tokenizer)} for message in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = "\n\n".join(f"{message['role'].capitalize()}:\n{message['content']}" for message in messages)
    return text + "\n\nAssistant:\n" if add_generation_prompt else text


def issue_text(record: Record, tokenizer: Any) -> str:
    """An issue or pull request thread as training text: ``render_chat(issue_messages(record))``."""
    return render_chat(issue_messages(record), tokenizer)


def example_text(
    record: Record,
    tokenizer: Any,
    config: TransformConfig,
    rng: random.Random,
    context: ContextFn | None = None,
) -> str:
    """The training text for one record, chosen by its kind.

    Code files become a FIM example with probability ``config.fim_rate``, else plain file text. Pass
    ``record_rng(record, config.seed)`` as ``rng`` for examples that do not depend on record order.
    With ``context``, code examples get retrieved context in front (``ContextFn``); the random draws
    are the same with or without it, so the context is the only difference.
    """
    if record.kind is Kind.CODE:
        if rng.random() < config.fim_rate:
            return fim_example(
                record,
                rng,
                spm_rate=config.spm_rate,
                tokenizer=tokenizer,
                context=context,
                window=config.fim_window_chars,
            )
        lead = context(record, None, None) if context is not None else ""
        return lead + code_text(record, tokenizer)
    if record.kind is Kind.DOC:
        return doc_text(record, tokenizer)
    if record.kind in (Kind.ISSUE, Kind.PULL_REQUEST):
        return issue_text(record, tokenizer)
    if record.kind is Kind.COMMIT:
        return commit_text(record, tokenizer)
    if record.kind is Kind.WIKI_PAGE:
        return wiki_text(record, tokenizer)
    if record.kind is Kind.DIAGRAM:
        return diagram_text(record, tokenizer)
    raise RepotuneError(f"record {record.id}: no transform for kind {record.kind!r}")
