"""Exact and near-duplicate detection: a normalized content hash, and MinHash LSH.

Near duplicates are found on word 5-gram shingles. Records are offered held-out ones first, so when
a training file is a near copy of an eval file, the training copy is the one that goes: the eval set
never has a near twin in training.

Signatures are one-permutation MinHash (Li, Owen and Zhang, 2012) with optimal densification
(Shrivastava, 2017): one hash per shingle picks a bin and a value, each bin keeps its minimum, and
empty bins borrow from the next non-empty bin along a fixed random probe order. Two signatures agree
in a bin with probability equal to the Jaccard similarity of the shingle sets, as with classic
MinHash, but building one costs one hash per shingle instead of one per shingle and permutation
(128 times less work; `datasketch.MinHash.update_batch` took 1.1 s of the 1.8 s signing the Python
standard library). The LSH index and the similarity estimate are datasketch's `MinHashLSH` and
`LeanMinHash`, which take the signature as plain hash values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from repotune.errors import RepotuneError

# Odd 64-bit multipliers combine five token hashes into one order-sensitive shingle hash.
_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)
_EMPTY = np.uint32(0xFFFFFFFF)


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
    """Hash of the text without its whitespace, so re-indented and re-wrapped copies match."""
    data = text.encode("utf-8", errors="replace")
    return hashlib.blake2b(data.translate(None, b" \t\n\r\x0b\x0c"), digest_size=16).digest()


# Word characters for shingling, as bytes of UTF-8: ASCII letters, digits and ``_``, and every byte
# of a multi-byte character, so non-ASCII words stay whole.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", np.uint8)] = True
_WORD_BYTE[0x80:] = True
# Token hashes are polynomial hashes mod 2**32 read off one prefix sum per text: (prefix[end] -
# prefix[start]) * P**-start. P is odd, so it has an inverse mod 2**32. 32 bits are plenty: a
# project has some 10**5 distinct words, so two of them share a hash about once per project, which
# moves a Jaccard estimate by nothing measurable.
_P = 0x01000193
_P_INVERSE = pow(_P, -1, 2**32)


class _Powers:
    """P**i and P**-i mod 2**32, grown on demand and shared by every text."""

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint32)
        self.down = np.ones(1, dtype=np.uint32)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.up.size < n:
            size = max(n, 2 * self.up.size)
            self.up = np.empty(size, dtype=np.uint32)
            self.down = np.empty(size, dtype=np.uint32)
            self.up[0] = self.down[0] = 1
            np.cumprod(np.full(size - 1, _P, dtype=np.uint32), out=self.up[1:])
            np.cumprod(np.full(size - 1, _P_INVERSE, dtype=np.uint32), out=self.down[1:])
        return self.up[:n], self.down


_powers = _Powers()


def token_hashes(text: str) -> np.ndarray:
    """32-bit hashes of the words of ``text``, in order, computed without a Python loop per word."""
    data = np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)
    is_word = np.zeros(data.size + 2, dtype=bool)
    is_word[1:-1] = _WORD_BYTE[data]
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])  # alternately a word's start and its end
    starts, ends = edges[0::2], edges[1::2]
    up, down = _powers.get(data.size)
    prefix = np.zeros(data.size + 1, dtype=np.uint32)
    with np.errstate(over="ignore"):  # arithmetic mod 2**32 is the point
        np.cumsum((data.astype(np.uint32) + np.uint32(1)) * up, out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * down[starts]


def _fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit flips about half of the output bits."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(33))
        values = values * np.uint64(0xFF51AFD7ED558CCD)
        values = values ^ (values >> np.uint64(33))
        values = values * np.uint64(0xC4CEB9FE1A85EC53)
        return values ^ (values >> np.uint64(33))


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Well-mixed 64-bit hashes of the word n-grams of ``text`` (a text without words hashes whole)."""
    tokens = token_hashes(text)
    if tokens.size == 0:
        digest = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=8).digest()
        return np.frombuffer(digest, dtype=np.uint64).copy()
    n = min(ngram, tokens.size)
    width = tokens.size - n + 1
    mixed = np.zeros(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            mixed ^= tokens[offset : offset + width].astype(np.uint64) * _MIX[offset % len(_MIX)]
    return _fmix64(mixed)


class Signer:
    """One-permutation MinHash signatures with ``num_perm`` bins, all drawn with the same seed."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        # Row b is the order in which empty bin b looks for a donor; fixed, so equal sets agree.
        self._probes = np.stack([rng.permutation(config.num_perm) for _ in range(config.num_perm)])

    def sign(self, text: str) -> np.ndarray:
        bins = self.config.num_perm
        hashes = shingle_hashes(text, self.config.ngram)
        signature = np.full(bins, _EMPTY, dtype=np.uint32)
        np.minimum.at(signature, (hashes >> np.uint64(32)) % np.uint64(bins), hashes.astype(np.uint32))
        empty = signature == _EMPTY
        if empty.any():
            rows = self._probes[empty]
            donors = rows[np.arange(rows.shape[0]), (~empty)[rows].argmax(axis=1)]
            # Mixing in the bin number keeps a borrowed value from matching its donor's own bin.
            signature[empty] = signature[donors] ^ np.flatnonzero(empty).astype(np.uint32) * np.uint32(
                0x9E3779B1
            )
        return signature


class NearDuplicateIndex:
    """Keeps the first of each group of near duplicates, in the order records are offered."""

    def __init__(self, config: DedupConfig) -> None:
        from datasketch import MinHashLSH  # imports scipy (about 0.4 s): only where the index is built

        self.config = config
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._signatures: dict[str, object] = {}
        self._exact: dict[bytes, str] = {}

    def offer(self, key: str, exact: bytes, signature: np.ndarray) -> tuple[str, str] | None:
        """Add ``key`` and return ``None``, or return (``exact``/``near``, key of the kept twin)."""
        from datasketch import LeanMinHash

        if exact in self._exact:
            return "exact", self._exact[exact]
        minhash = LeanMinHash(seed=self.config.seed, hashvalues=signature, scheme="affine32")
        for other in self._lsh.query(minhash):
            # LSH finds candidates; the estimated Jaccard similarity confirms them.
            if minhash.jaccard(self._signatures[other]) >= self.config.threshold:
                return "near", other
        self._exact[exact] = key
        self._signatures[key] = minhash
        self._lsh.insert(key, minhash, check_duplication=False)
        return None
