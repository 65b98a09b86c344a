"""Exact and near-duplicate detection: a normalized content hash, and MinHash LSH (datasketch).

Near duplicates are found on word 5-gram shingles. Records are offered held-out ones first, so when
a training file is a near copy of an eval file, the training copy is the one that goes: the eval set
never has a near twin in training.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from repotune.errors import RepotuneError

_WS = re.compile(r"\s+")
# Odd 64-bit multipliers combine five token hashes into one order-sensitive shingle hash.
_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)
# Shingles are fed to MinHash in slices, bounding the (shingles x permutations) matrix it builds.
_BATCH = 8192


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    """Estimated Jaccard similarity of shingle sets at or above which two records are near duplicates."""
    num_perm: int = 128
    """MinHash permutations: more is more precise and slower (memory: 4 bytes each per record)."""
    ngram: int = 5
    """Words per shingle."""
    seed: int = 1
    """MinHash seed; fixed so that the same data gives the same decisions."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise RepotuneError("--dedup-threshold must be between 0 and 1 (e.g. 0.8)")
        if self.num_perm < 16:
            raise RepotuneError("num_perm must be at least 16")
        if self.ngram < 1:
            raise RepotuneError("ngram must be at least 1")


def exact_key(text: str) -> bytes:
    """Hash of the text with runs of whitespace collapsed, so re-indented copies match."""
    return hashlib.blake2b(_WS.sub(" ", text).strip().encode(), digest_size=16).digest()


# Word characters for shingling, as bytes of UTF-8: ASCII letters, digits and ``_``, and every byte
# of a multi-byte character, so non-ASCII words stay whole.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", np.uint8)] = True
_WORD_BYTE[0x80:] = True
# Token hashes are polynomial hashes mod 2**64 read off one prefix sum per text: (prefix[end] -
# prefix[start]) * P**-start. P is odd, so it has an inverse mod 2**64.
_P = 0x100000001B3
_P_INVERSE = pow(_P, -1, 2**64)


class _Powers:
    """P**i and P**-i mod 2**64, grown on demand and shared by every text."""

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.up.size < n:
            size = max(n, 2 * self.up.size)
            self.up = np.empty(size, dtype=np.uint64)
            self.down = np.empty(size, dtype=np.uint64)
            self.up[0] = self.down[0] = 1
            np.cumprod(np.full(size - 1, _P, dtype=np.uint64), out=self.up[1:])
            np.cumprod(np.full(size - 1, _P_INVERSE, dtype=np.uint64), out=self.down[1:])
        return self.up[:n], self.down


_powers = _Powers()


def token_hashes(text: str) -> np.ndarray:
    """64-bit hashes of the words of ``text``, in order, computed without a Python loop per word."""
    data = np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)
    edges = np.diff(_WORD_BYTE[data].astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    up, down = _powers.get(data.size)
    prefix = np.zeros(data.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * up, out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * down[starts]


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word n-grams of ``text``."""
    tokens = token_hashes(text)
    if tokens.size == 0:
        return np.zeros(0, dtype=np.uint32)
    n = min(ngram, tokens.size)
    width = tokens.size - n + 1
    mixed = np.zeros(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            mixed ^= tokens[offset : offset + width] * _MIX[offset % len(_MIX)]
    folded = (mixed >> np.uint64(32)) ^ (mixed & np.uint64(0xFFFFFFFF))
    return np.unique(folded.astype(np.uint32))


class Signer:
    """Builds MinHash signatures that share one set of permutations."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        self._template = MinHash(num_perm=config.num_perm, seed=config.seed)

    def sign(self, text: str) -> LeanMinHash:
        minhash = MinHash(
            num_perm=self.config.num_perm,
            seed=self.config.seed,
            hashfunc=int,
            permutations=self._template.permutations,
            scheme="affine32",
        )
        hashes = shingle_hashes(text, self.config.ngram)
        for start in range(0, len(hashes), _BATCH):
            minhash.update_batch(hashes[start : start + _BATCH])
        return LeanMinHash(minhash)


class NearDuplicateIndex:
    """Keeps the first of each group of near duplicates, in the order records are offered."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._signatures: dict[str, LeanMinHash] = {}
        self._exact: dict[bytes, str] = {}

    def offer(self, key: str, exact: bytes, signature: LeanMinHash) -> tuple[str, str] | None:
        """Add ``key`` and return ``None``, or return (``exact``/``near``, key of the kept twin)."""
        if exact in self._exact:
            return "exact", self._exact[exact]
        for other in self._lsh.query(signature):
            # LSH finds candidates; the estimated Jaccard similarity confirms them.
            if signature.jaccard(self._signatures[other]) >= self.config.threshold:
                return "near", other
        self._exact[exact] = key
        self._signatures[key] = signature
        self._lsh.insert(key, signature, check_duplication=False)
        return None
