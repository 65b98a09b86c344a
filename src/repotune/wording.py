"""How counts read in what repotune prints: ``1 commit``, ``2 commits``, ``1,200 lines``."""

from __future__ import annotations


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` with its noun, singular for exactly one: ``counted(1, "secret")`` is ``1 secret``;
    ``many`` where the plural is not ``one + "s"`` (``counted(2, "pass", "passes")``)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"
