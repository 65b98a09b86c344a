"""Search terms of code and prose: identifiers split on case and underscores, lowercased.

``load_recipe`` gives the whole term ``load_recipe`` and the parts ``load`` and ``recipe`` (and
``loadRecipe`` gives ``loadrecipe``, ``load``, ``recipe``), so a call site finds the definition by its
exact name (a rare term, which BM25 weighs high) and by the words in it. Keywords and words found in
nearly every file of any language are dropped: BM25 would weigh them near zero anyway, and each one
in a query costs a pass over a posting list as long as the index.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import chain

_WORD = re.compile(r"\w+")
# The parts of one identifier: runs of capitals before a capitalised word (HTTP|Server), capitalised
# or lowercase words, capitals, digits, and letters outside ASCII.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+|[^\W\d_A-Za-z]+")

_COMMON_WORDS = {
    "Python": "and as assert async await break class continue def del elif else except false finally for "
    "from global if import in is lambda none nonlocal not or pass raise return self cls true try while "
    "with yield",
    "the C family, Java, JavaScript/TypeScript, Go, Rust": "bool case const default do fn func function go "
    "int let mut new nil null package pub public private protected static string struct switch this type "
    "undefined use var void",
    "English": "an are be by it of on that the to",
}
STOPWORDS = frozenset(word for words in _COMMON_WORDS.values() for word in words.split())


def code_terms(text: str) -> list[str]:
    """The search terms of ``text``, in order, with repeats (term frequency counts in BM25).

    Each identifier gives its parts (case, underscore and digit boundaries), and itself as one
    lowercased term when it has more than one part. Terms of one character and ``STOPWORDS`` are
    left out.
    """
    return list(chain.from_iterable(map(word_terms, _WORD.findall(text))))


@lru_cache(maxsize=1 << 16)
def word_terms(word: str) -> tuple[str, ...]:
    """The terms of one identifier (see ``code_terms``); cached, since code repeats its names a lot."""
    parts = [part.lower() for part in _PART.findall(word)]
    terms = [part for part in parts if len(part) > 1 and part not in STOPWORDS]
    if len(parts) > 1:
        whole = word.strip("_").lower()
        if whole not in STOPWORDS:
            terms.insert(0, whole)
    return tuple(terms)
