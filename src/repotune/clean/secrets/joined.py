"""Tokens split across string literals: ``"ghp_" + "16C7e42F..."``, ``("sk_live_" "4eC39HqL...")``.

Code that writes a token in pieces (to slip past a push-protection scanner, or to keep a line short)
holds no whole token in any one literal, so no rule matches. ``JOINED`` is the engine's finder for
them: near each keyword of a token family (``tokens``), adjacent literals joined by ``+`` or set side
by side (Python and C join them; Go, Java and JavaScript use ``+``), on one line or across line
breaks, are read as one value; where a token runs across two or more of the pieces, each piece it
touches becomes the token's placeholder and the token counts once. A token inside one piece is left
to the rules. Not found: a token whose keyword is itself cut (``"gh" + "p_..."``), pieces in
variables (``prefix + rest``), and template literals.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from repotune.clean.secrets.engine import Finder, Pieces, Ruleset, SecretRule
from repotune.clean.secrets.tokens import TOKEN_RULES

# A quoted literal on one line, escapes included (the unrolled form: no alternation per character).
_LITERAL = r""""[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"|'[^'\\\n]*+(?:\\.[^'\\\n]*+)*+'"""
# Between two pieces: a `+`, or spaces only, on one line or across a line break (a trailing `+`, a
# leading one, a parenthesised continuation, a backslash continuation).
_JOIN = r"[ \t]*+(?:\+[ \t]*+)?(?:\\?\r?\n[ \t]*+(?:\+[ \t]*+)?)?"
_CHAIN = re.compile(rf"(?:{_LITERAL})(?:{_JOIN}(?:{_LITERAL}))+")
_PIECE = re.compile(_LITERAL)
_LINES_BACK = 8
"""How many lines above a keyword a chain may start (for a keyword in a later piece: Mailchimp's
``-us14`` ends its key)."""
_REACH = 4096
"""How far around a keyword lines are searched, and how far past them a chain that starts there is
followed."""
_MOST_PIECES = 16
"""Pieces of one chain looked at: each run of them is joined on its own."""
_SHORTEST_TOKEN = 16
"""Joined pieces shorter than this hold no token of any family."""
_LONGEST_TOKEN = 2048
"""No token is longer: a run of pieces whose inner ones hold more is not joined further."""

_TOKENS = Ruleset(TOKEN_RULES)


def _find(text: str, positions: list[int]) -> list[tuple[Pieces, SecretRule]]:
    """Each split token near the keyword ``positions``: the insides of the pieces it touches, and its
    rule."""
    found: list[tuple[Pieces, SecretRule]] = []
    # A keyword that starts with a letter right after another letter is inside a word ("ta-sk"), where
    # no token begins: the families' keywords start their tokens, or are not letters (Mailchimp's -us).
    positions = [p for p in positions if p == 0 or not (text[p].isalpha() and text[p - 1].isalpha())]
    for chain in _chains(text, positions):
        pieces = [(m.start() + 1, m.end() - 1) for m in _PIECE.finditer(text, chain.start(), chain.end())]
        pieces = pieces[:_MOST_PIECES]
        for first, last, rule in _split_tokens([text[start:end] for start, end in pieces]):
            found.append((tuple(pieces[first : last + 1]), rule))
    return found


JOINED = Finder(tuple(sorted({keyword for rule in TOKEN_RULES for keyword in rule.keywords})), _find)


def _chains(text: str, positions: list[int]) -> list[re.Match[str]]:
    """The chains of joined literals that hold one of the keyword ``positions``: each run of lines
    around the keywords is searched once, so the work stays linear in the text however many keywords
    it holds."""
    chains: list[re.Match[str]] = []
    for block_start, block_end in _blocks(text, positions):
        for chain in _CHAIN.finditer(text, block_start, block_end):
            if chain.end() == block_end and block_end < len(text):
                chain = _CHAIN.match(text, chain.start(), block_end + _REACH) or chain
            at = bisect_left(positions, chain.start())
            if at < len(positions) and positions[at] < chain.end():
                chains.append(chain)
    return chains


def _blocks(text: str, positions: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of lines from ``_LINES_BACK`` above a keyword to the line below it
    (at most ``_REACH`` characters each way), runs that meet merged."""
    blocks: list[tuple[int, int]] = []
    for position in positions:
        end = position
        for _ in range(2):
            end = text.find("\n", end + 1, position + _REACH)
            if end < 0:
                end = min(position + _REACH, len(text))
                break
        if blocks and position <= blocks[-1][1]:
            blocks[-1] = (blocks[-1][0], max(end, blocks[-1][1]))
            continue
        floor = max(position - _REACH, blocks[-1][1] if blocks else 0)
        start = position
        for _ in range(_LINES_BACK + 1):
            start = text.rfind("\n", floor, start)
            if start < 0:
                start = floor
                break
        start = start + 1 if text[start : start + 1] == "\n" else start
        blocks.append((start, end))
    return blocks


def _split_tokens(pieces: list[str]) -> list[tuple[int, int, SecretRule]]:
    """(first piece, last piece, rule) of each token that starts in one piece and ends in a later one.
    Each run of pieces is joined on its own: a token's rule wants nothing token-like touching it, and
    the pieces around it (``"v1/" + "ghp_" + "..." + "/repos"``) would."""
    found: list[tuple[int, int, SecretRule]] = []
    first = 0
    while first < len(pieces) - 1:
        for last in range(first + 1, len(pieces)):
            joined = "".join(pieces[first : last + 1])
            if len(joined) < _SHORTEST_TOKEN:
                continue
            if len(joined) - len(pieces[first]) - len(pieces[last]) > _LONGEST_TOKEN:
                break  # the pieces between are longer than any token
            head, tail = len(pieces[first]), len(joined) - len(pieces[last])
            spans = _TOKENS.find(joined)
            hit = next((rule for start, end, rule in spans if start < head and end > tail), None)
            if hit is not None:
                found.append((first, last, hit))
                first = last
                break
        first += 1
    return found
