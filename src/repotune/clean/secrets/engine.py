"""The redaction engine: it runs rules, and knows nothing of any one secret.

A rule runs only where one of its keywords is, as in gitleaks: one Aho-Corasick pass over the
lower-cased text (ahocorasick-rs, a Rust automaton) finds every keyword of every rule at once, and
each rule's regex then runs only on the lines that hold one of its keywords (or over the whole text,
for a rule that spans lines), so a rule costs next to nothing on text without its keywords and the
table can grow by the hundred without slowing ``clean`` down. Matches are taken
in rule order; a later match that overlaps an earlier one is dropped, so a key block is one
placeholder and a ``ghp_`` token inside ``token = "..."`` is counted once, under its own kind.
Placeholders already in the text are never matched again: ``redact`` twice gives the same text.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ahocorasick_rs import AhoCorasick, Implementation

Check = Callable[[str, re.Match[str]], bool]
"""Decides on one match: gets the original text (spans of a ``fold`` rule's match index into it too)."""

Block = tuple[int, int]

_PLACEHOLDER = re.compile(r"<(?:SECRET|PII):[a-z0-9_]+>")
_MASK_RUN = re.compile(r"[xX*#\u2022]{8,}")


def documented_example(value: str) -> bool:
    """A value that documentation writes in a secret's shape: AWS's `AKIAIOSFODNN7EXAMPLE`, a body of
    x's or stars (`ghp_xxxxxxxx`, `sk_test_XXXXXXXX`), or one cut short with dots (`sk-...`, `hf_...`).
    No random credential has "example" or eight x's in a row in it (a run of A's does start Twitter's
    bearer tokens, so other letters are no sign)."""
    return (
        "example" in value.lower()
        or "..." in value
        or "\u2026" in value
        or _MASK_RUN.search(value) is not None
    )


@dataclass(frozen=True)
class SecretRule:
    kind: str
    """Names the placeholder: ``<SECRET:kind>``."""
    pattern: re.Pattern[str]
    keywords: tuple[str, ...]
    """Lower-case literals: the rule runs only on the lines that hold one (every match is on such a
    line: a token's prefix, a key's name, a URL's host)."""
    group: int | str = 0
    """Which group is the secret to replace; the rest of the match is kept."""
    fold: bool = False
    """The pattern is written in lower case and searched in ``text.lower()``: case-insensitive, but fast."""
    check: Check | None = None
    """A final say on each match (boundaries, stand-ins, randomness); ``None`` accepts every match."""
    whole_text: bool = False
    """Run over the whole text once a keyword is in it: for patterns that span lines, and for a literal
    prefix too common to narrow anything (the regex engine skips to a literal prefix by itself)."""
    lines: re.Pattern[str] | None = None
    """For a rule that has no literal keyword (IP addresses): a pattern that finds its lines instead."""
    tag: str = "SECRET"

    def __post_init__(self) -> None:
        if not self.keywords and self.lines is None:
            raise ValueError(f"rule {self.kind!r} needs keywords or a lines pattern")
        for keyword in self.keywords:
            if not keyword or keyword != keyword.lower():
                raise ValueError(f"rule {self.kind!r}: keyword {keyword!r} must be non-empty lower case")

    @property
    def placeholder(self) -> str:
        return f"<{self.tag}:{self.kind}>"


def rule(
    kind: str,
    keywords: str | tuple[str, ...],
    pattern: str,
    *,
    check: Check | None = None,
    fold: bool = False,
    whole_text: bool = False,
    flags: int = 0,
) -> SecretRule:
    """A rule from its table entry: ``keywords`` space-separated (or a tuple); the secret is the
    pattern's ``secret`` group where it has one, else the whole match."""
    keywords = tuple(keywords.split()) if isinstance(keywords, str) else keywords
    group = "secret" if "(?P<secret>" in pattern else 0
    return SecretRule(
        kind, re.compile(pattern, flags), keywords, group=group, fold=fold, check=check, whole_text=whole_text
    )


Pieces = tuple[Block, ...]


@dataclass(frozen=True)
class Finder:
    """Secrets that no one regex can match (a token written in pieces): ``find(text, positions)``
    gets the text and the sorted positions of its keywords there, and gives each secret it finds as
    the spans it lies in and the rule that names it. Finders run before the rules, and a rule's match
    that overlaps their spans is dropped; each secret is counted once, however many spans it has."""

    keywords: tuple[str, ...]
    find: Callable[[str, list[int]], list[tuple[Pieces, SecretRule]]]


class Ruleset:
    """Rules in the order they take precedence, with one automaton over all their keywords (and the
    finders')."""

    def __init__(self, rules: Sequence[SecretRule], finders: Sequence[Finder] = ()) -> None:
        self.rules = tuple(rules)
        self.finders = tuple(finders)
        keywords = sorted(
            {keyword for rule in self.rules for keyword in rule.keywords}
            | {keyword for finder in self.finders for keyword in finder.keywords}
        )
        index = {keyword: i for i, keyword in enumerate(keywords)}
        self._rule_keywords = [tuple(sorted(index[k] for k in rule.keywords)) for rule in self.rules]
        self._finder_keywords = [tuple(sorted(index[k] for k in finder.keywords)) for finder in self.finders]
        # keyword -> the rules it triggers; rules found by a `lines` pattern are tried on every text.
        self._triggers: list[list[int]] = [[] for _ in keywords]
        for i, rule_keywords in enumerate(self._rule_keywords):
            for keyword in rule_keywords:
                self._triggers[keyword].append(i)
        self._always = frozenset(i for i, rule in enumerate(self.rules) if rule.lines is not None)
        # The DFA is about three times faster than the NFAs on source code, for a few hundred kB of tables.
        self._automaton = AhoCorasick(keywords, implementation=Implementation.DFA)

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        counts: Counter[str] = Counter()
        found = self._find(text)
        if not found:
            return text, counts
        parts: list[str] = []
        position = 0
        for start, end, rule, counted in found:
            parts.append(text[position:start])
            parts.append(rule.placeholder)
            counts[rule.kind] += counted
            position = end
        parts.append(text[position:])
        return "".join(parts), counts

    def find(self, text: str) -> list[tuple[int, int, SecretRule]]:
        """Each secret's (start, end, rule) in ``text``, in text order and disjoint."""
        return [(start, end, rule) for start, end, rule, _ in self._find(text)]

    def _find(self, text: str) -> list[tuple[int, int, SecretRule, bool]]:
        """(start, end, rule, whether it counts: only a secret's first span does), in text order."""
        if not text:
            return []
        lower = _lower(text)
        hits: dict[int, list[int]] = {}
        for keyword, start, _ in self._automaton.find_matches_as_indexes(lower, overlapping=True):
            if keyword in hits:
                hits[keyword].append(start)
            else:
                hits[keyword] = [start]
        triggered = set(self._always)
        for keyword in hits:
            triggered.update(self._triggers[keyword])

        starts: list[int] = []
        ends: list[int] = []
        found: list[tuple[int, int, SecretRule, bool]] = []
        if "<SECRET:" in text or "<PII:" in text:
            for match in _PLACEHOLDER.finditer(text):
                starts.append(match.start())
                ends.append(match.end())
        for finder, finder_keywords in zip(self.finders, self._finder_keywords, strict=True):
            positions = sorted(p for k in finder_keywords for p in hits.get(k, ()))
            if not positions:
                continue
            for spans, rule in finder.find(text, positions):
                if any(_overlaps(starts, ends, start, end) for start, end in spans):
                    continue
                for i, (start, end) in enumerate(spans):
                    at = bisect_left(starts, start)
                    starts.insert(at, start)
                    ends.insert(at, end)
                    found.append((start, end, rule, i == 0))
        blocks: dict[tuple[int, ...], list[Block]] = {}
        for index in sorted(triggered):
            rule = self.rules[index]
            for match in _matches(rule, self._rule_keywords[index], text, lower, hits, blocks):
                start, end = match.span(rule.group)
                if start == end or _overlaps(starts, ends, start, end):
                    continue
                if rule.check is not None and not rule.check(text, match):
                    continue
                if rule.tag == "SECRET" and documented_example(text[start:end]):
                    continue
                at = bisect_left(starts, start)
                starts.insert(at, start)
                ends.insert(at, end)
                found.append((start, end, rule, True))
        found.sort(key=lambda item: item[0])
        return found


def _lower(text: str) -> str:
    lower = text.lower()
    if len(lower) != len(text):
        # "İ" is the one character whose lower case is two; spans in `lower` must index `text`.
        lower = text.replace("\u0130", "I").lower()
    return lower


def _matches(
    rule: SecretRule,
    keywords: tuple[int, ...],
    text: str,
    lower: str,
    hits: dict[int, list[int]],
    blocks: dict[tuple[int, ...], list[Block]],
) -> Iterator[re.Match[str]]:
    haystack = lower if rule.fold else text
    if rule.lines is not None:
        spans = _line_blocks(text, [m.start() for m in rule.lines.finditer(haystack)])
    elif rule.whole_text:
        spans = [(0, len(text))]
    else:
        if keywords not in blocks:
            positions = sorted(p for k in keywords for p in hits.get(k, ()))
            blocks[keywords] = _line_blocks(text, positions)
        spans = blocks[keywords]
    for start, end in spans:
        yield from rule.pattern.finditer(haystack, start, end)


def _line_blocks(text: str, positions: list[int]) -> list[Block]:
    """The (start, end) of each run of consecutive lines that holds one of the sorted ``positions``."""
    result: list[Block] = []
    size = len(text)
    line_end = -1
    for position in positions:
        if position <= line_end:
            continue  # on the line just taken
        line_start = text.rfind("\n", 0, position) + 1
        line_end = text.find("\n", position)
        if line_end < 0:
            line_end = size
        if result and line_start <= result[-1][1] + 1:
            result[-1] = (result[-1][0], line_end)
        else:
            result.append((line_start, line_end))
    return result


def _overlaps(starts: list[int], ends: list[int], start: int, end: int) -> bool:
    """Does [start, end) overlap any accepted span? The spans are disjoint and sorted by start."""
    index = bisect_left(starts, end)
    return index > 0 and ends[index - 1] > start
