"""Training text becomes token ids, and token ids become fixed-length packed blocks.

Packing lays examples end to end and cuts the stream into blocks of exactly ``seq_len`` tokens, so
almost no compute goes to padding. Examples in one block must not see each other: ``position_ids``
restart at 0 at every example boundary, and transformers (5.x, ``masking_utils``
``find_packed_sequence_indices``) turns such position ids into a block-diagonal causal mask for the
sdpa, eager and flex attention paths, and into per-sequence lengths for flash attention. It does so
only when the model is called with ``position_ids``, no ``attention_mask`` and no KV cache: train and
score with ``use_cache=False`` (``transformers.Trainer`` sets ``model.config.use_cache`` from
``TrainingArguments.use_cache``, False by default); a model called with its config's default
``use_cache=True`` builds a cache, skips that detection, and lets attention cross documents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from repotune.atomic import atomic_open
from repotune.data.transforms import (
    FORMAT_VERSION,
    LITERAL,
    TransformConfig,
    encode,
    example_text,
    has_fim_tokens,
    record_rng,
)
from repotune.digest import folder_digest
from repotune.errors import RepotuneError
from repotune.records import Kind, Record, utc_moment
from repotune.retrieval.config import INDEX_FORMAT_VERSION, RetrievalConfig

IGNORE_INDEX = -100  # the label transformers' loss skips
_ENCODE_BATCH = 256  # texts per tokenizer call: fast tokenizers encode a batch in parallel


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in ``tokenizer`` that changes the ids it gives for a text.

    For a fast tokenizer that is its full serialization (vocabulary, merges, normalizer, added tokens);
    the chat template and the special-token choices are added, since both change the rendered text.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extras = {
        "chat_template": getattr(tokenizer, "chat_template", None),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "add_bos": bool(getattr(tokenizer, "add_bos_token", False)),
    }
    digest.update(json.dumps(extras, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(
    records: Sequence[Record],
    tokenizer: Any,
    config: TransformConfig,
    retrieval_rate: float = 0.0,
    retrieval: RetrievalConfig | None = None,
) -> str:
    """The cache key of one tokenization: the records (every field), the tokenizer, the config and format,
    and with retrieval on, its rate, its config, the index format and the embedding model's files (a
    model replaced in its folder retrieves other context)."""
    digest = hashlib.sha256(f"repotune-tokens:{FORMAT_VERSION}\n".encode())
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    if retrieval_rate > 0:
        retrieval = retrieval or RetrievalConfig()
        settings: dict[str, Any] = {"rate": retrieval_rate, "format": INDEX_FORMAT_VERSION}
        settings["config"] = dataclasses.asdict(retrieval)
        if retrieval.embedding_model is not None:
            settings["embedding_model_files"] = folder_digest(Path(retrieval.embedding_model))
        digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    for record in records:
        digest.update(record.to_json().encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def tokenize_records(
    records: Iterable[Record],
    tokenizer: Any,
    config: TransformConfig,
    cache_dir: Path | None = None,
    *,
    retrieval_rate: float = 0.0,
    retrieval: RetrievalConfig | None = None,
) -> list[np.ndarray]:
    """Token ids (int32) of each record's training text (``example_text``), with EOS appended.

    A leading BOS is added only where the tokenizer adds one to every input by default (Llama-style),
    so training sees what inference feeds the model. With ``cache_dir``, the ids are saved there under
    ``cache_key`` and a later call with the same records, tokenizer and settings loads them instead of
    tokenizing again.

    With ``retrieval_rate`` above 0, that share of the code examples get retrieved cross-file context in
    front (``repotune.retrieval.TrainingContext``, settings from ``retrieval``), from an index over
    ``records`` alone: pass training records only, never held-out ones.
    """
    records = list(records)
    if isinstance(retrieval_rate, bool) or not 0.0 <= retrieval_rate <= 1.0:
        raise RepotuneError(f"retrieval_rate must be a number from 0 to 1, got {retrieval_rate!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise RepotuneError("the tokenizer has no end-of-sequence token; packing needs one between examples")
    if config.fim_rate > 0 and any(r.kind is Kind.CODE for r in records) and not has_fim_tokens(tokenizer):
        raise RepotuneError(
            f"fim_rate is {config.fim_rate:g} but the tokenizer has no FIM tokens; call "
            "ensure_fim_tokens(tokenizer) (and resize the model's embeddings) first, or set fim_rate to 0"
        )
    path = None
    if cache_dir is not None:
        key = cache_key(records, tokenizer, config, retrieval_rate, retrieval)
        path = cache_dir / f"tokens-{key}.npz"
        if path.exists():
            with np.load(path) as saved:
                return _split(saved["tokens"], saved["offsets"])

    context = None
    if retrieval_rate > 0:
        from repotune.retrieval.context import TrainingContext

        context = TrainingContext(records, tokenizer, rate=retrieval_rate, seed=config.seed, config=retrieval)
    texts = [example_text(r, tokenizer, config, record_rng(r, config.seed), context) for r in records]
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    sequences: list[np.ndarray] = []
    for start in range(0, len(texts), _ENCODE_BATCH):
        chunk = texts[start : start + _ENCODE_BATCH]
        # Text with a special token's name written in it (``literal``) is encoded on its own.
        plain = [text if LITERAL not in text else "" for text in chunk]
        batch = tokenizer(plain, add_special_tokens=False)["input_ids"]
        for text, ids in zip(chunk, batch, strict=True):
            if LITERAL in text:
                ids = encode(tokenizer, text)
            # A chat template may already write the BOS token as text.
            lead = [bos] if bos is not None and ids[:1] != [bos] else []
            sequences.append(np.array([*lead, *ids, eos], dtype=np.int32))

    if path is not None:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tokens = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int32)
        with atomic_open(path, "wb") as handle:
            np.savez(handle, tokens=tokens, offsets=offsets)
    return sequences


def weighted_indices(
    records: Sequence[Record],
    weights: Mapping[str, float],
    seed: int,
    *,
    recent: frozenset[str] = frozenset(),
    recent_weight: float = 1.0,
) -> list[int]:
    """Indices into ``records`` with each record repeated or thinned by its kind's weight: ``int(weight)``
    copies, and one more with probability ``weight - int(weight)``; in record order.

    A code file whose path is in ``recent`` has its kind's weight times ``recent_weight``: the files
    the newest commits touched (``recent_files``).

    The draw is seeded by ``seed`` and the record's id, so a record is kept or dropped the same way on
    every run and in any order. Copies of an example are identical token for token (a FIM example keeps
    its cut); the Trainer shuffles the packed blocks, so they are not seen back to back. Kinds missing
    from ``weights`` keep weight 1.
    """
    indices: list[int] = []
    for index, record in enumerate(records):
        weight = weights.get(record.kind.value, 1.0)
        if record.kind is Kind.CODE and record.file_path in recent:
            weight *= recent_weight
        copies = int(weight)
        if random.Random(f"{seed}:kind-weight:{record.id}").random() < weight - copies:
            copies += 1
        indices.extend([index] * copies)
    return indices


RECENT_MAX_SHARE = 0.5
"""The largest share of the code's characters that ``recent_files`` names: where the newest commits
touched more (a repository of a few large commits, such as one per release, or a reformat of
everything), they say nothing about where a team is working, and no file is named."""


def recent_files(records: Sequence[Record], commits: int) -> frozenset[str]:
    """The paths of code files that the newest ``commits`` commit records (by date) touched: where a
    team has been working, and where its next lines mostly go. In this repository's demo data, the
    newest 10 of 445 training commits touched 20% of the code's characters, which received 72% of the
    lines added after the cut (``data.recent_commits``). None when they hold more than
    ``RECENT_MAX_SHARE`` of the code."""
    moments = {r.id: utc_moment(r.meta.get("date")) for r in records if r.kind is Kind.COMMIT}
    dated = sorted((r for r in records if moments.get(r.id)), key=lambda r: moments[r.id], reverse=True)
    touched = {path for r in dated[:commits] for path in r.meta.get("files") or ()}
    code = {r.file_path: len(r.content) for r in records if r.kind is Kind.CODE and r.file_path}
    named = frozenset(path for path in touched if path in code)
    if sum(code[path] for path in named) > RECENT_MAX_SHARE * sum(code.values()):
        return frozenset()
    return named


def tokens_by_kind(records: Sequence[Record], sequences: Sequence[np.ndarray]) -> dict[str, int]:
    """Tokens of the examples of each kind, largest first (weighted or not, as given)."""
    counts: dict[str, int] = {}
    for record, sequence in zip(records, sequences, strict=True):
        counts[record.kind.value] = counts.get(record.kind.value, 0) + len(sequence)
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _split(tokens: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


@dataclass(frozen=True, eq=False)
class PackedBlocks:
    """Fixed-length training blocks; each array is (number of blocks, seq_len), int32."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    """Restart at 0 at every example's first token and at every block's first token."""
    labels: np.ndarray
    """``input_ids``, except ``IGNORE_INDEX`` on padding and on each example's first token."""
    real_tokens: int
    """Tokens that came from examples (everything but the final block's padding)."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def real_token_fraction(self) -> float:
        """Share of block positions holding example tokens rather than padding (0 to 1)."""
        return self.real_tokens / self.input_ids.size if self.input_ids.size else 0.0

    def head(self, count: int) -> PackedBlocks:
        """The first ``count`` blocks (all of them when there are fewer)."""
        # Real tokens fill the blocks from the start; only the final block has padding.
        real = min(self.real_tokens, max(count, 0) * self.seq_len)
        return PackedBlocks(self.input_ids[:count], self.position_ids[:count], self.labels[:count], real)

    def spread(self, count: int) -> PackedBlocks:
        """``count`` blocks evenly spaced from the first to the last (all of them when there are fewer):
        a sample of every part of the stream, where ``head`` would take its first examples only."""
        if count >= len(self):
            return self
        if count < 2:
            return self.head(count)
        chosen = [round(index * (len(self) - 1) / (count - 1)) for index in range(count)]
        # Real tokens fill the blocks from the start; only the final block has padding.
        real = sum(min(self.seq_len, self.real_tokens - index * self.seq_len) for index in chosen)
        return PackedBlocks(self.input_ids[chosen], self.position_ids[chosen], self.labels[chosen], real)


def pack(sequences: Sequence[np.ndarray], seq_len: int, pad_id: int | None = None) -> PackedBlocks:
    """Lay ``sequences`` end to end in order and cut the stream into blocks of exactly ``seq_len``.

    An example that runs past a block's end continues at the start of the next block, its positions
    restarting at 0 there: the piece is trained as a document of its own, since it cannot attend to the
    earlier piece anyway. Only the final block is padded, with ``pad_id`` (default: the last token of the
    last sequence, i.e. the EOS that ``tokenize_records`` appends); padding has label ``IGNORE_INDEX``
    and positions of its own, so it forms a separate segment no real token attends to.

    Each example's first token also gets label ``IGNORE_INDEX``, as in transformers'
    ``DataCollatorWithFlattening``: its label would train the previous example's last token (EOS) to
    predict the next, unrelated document.
    """
    if seq_len < 1:
        raise RepotuneError(f"seq_len must be at least 1, got {seq_len}")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    total = int(lengths.sum())
    num_blocks = math.ceil(total / seq_len)
    size = num_blocks * seq_len
    flat = np.zeros(size, dtype=np.int32)
    if total:
        flat[:total] = np.concatenate(sequences)
    if pad_id is None:
        pad_id = int(flat[total - 1]) if total else 0
    flat[total:] = pad_id

    # A segment starts at each example's first token, each block's first token, and where padding
    # begins; a position counts tokens since the latest segment start.
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1][lengths > 0]
    segment_start = np.zeros(size, dtype=np.int64)
    segment_start[starts] = starts
    segment_start[::seq_len] = np.arange(0, size, seq_len)
    if total < size:
        segment_start[total] = total
    positions = (np.arange(size) - np.maximum.accumulate(segment_start)).astype(np.int32)

    labels = flat.copy()
    labels[total:] = IGNORE_INDEX
    labels[starts] = IGNORE_INDEX
    shape = (num_blocks, seq_len)
    return PackedBlocks(flat.reshape(shape), positions.reshape(shape), labels.reshape(shape), total)


class PackedDataset(Dataset):
    """Packed blocks for ``transformers.Trainer``: items are ``input_ids``, ``position_ids``, ``labels``.

    There is deliberately no ``attention_mask``: with one, transformers builds a padding mask and does
    not look for packed sequences in ``position_ids``. The model must run without a KV cache (see the
    module docstring); ``Trainer`` arranges that by default.
    """

    def __init__(self, blocks: PackedBlocks) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.from_numpy(self.blocks.input_ids[index]).long(),
            "position_ids": torch.from_numpy(self.blocks.position_ids[index]).long(),
            "labels": torch.from_numpy(self.blocks.labels[index]).long(),
        }


@dataclass(frozen=True)
class PaddedBatches:
    """The naive baseline: batches in input order, each padded on the right to its longest example."""

    batches: list[dict[str, np.ndarray]]
    """Each with ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` on padding)."""
    real_tokens: int
    total_tokens: int

    @property
    def real_token_fraction(self) -> float:
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0


def padded_batches(sequences: Sequence[np.ndarray], batch_size: int, pad_id: int) -> PaddedBatches:
    """Group ``sequences`` into batches of ``batch_size`` and pad each to its longest (for benchmarks)."""
    if batch_size < 1:
        raise RepotuneError(f"batch_size must be at least 1, got {batch_size}")
    batches: list[dict[str, np.ndarray]] = []
    real = total = 0
    for start in range(0, len(sequences), batch_size):
        group = sequences[start : start + batch_size]
        width = max(len(s) for s in group)
        input_ids = np.full((len(group), width), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(group), width), dtype=np.int64)
        for row, sequence in enumerate(group):
            input_ids[row, : len(sequence)] = sequence
            attention_mask[row, : len(sequence)] = 1
        labels = np.where(attention_mask == 1, input_ids, IGNORE_INDEX)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
        real += int(attention_mask.sum())
        total += attention_mask.size
    return PaddedBatches(batches, real, total)
