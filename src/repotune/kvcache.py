"""Keys and values kept between forward passes: what evaluation's batched decoding and the server
share (``left_padded``: rows read alone, decoded as one batch) and the server's prefix cache.

``PrefixCache`` is the server's: an editor asks about the same file again and again, and each
completion's prompt is the one before with a few tokens changed near the cursor (the retrieved context
and the code above it stay). Reading that prompt again (the prefill) is most of a completion's time on
a CPU: ``benchmarks/serve_prefix_cache.py`` measures what keeping it saves. The keys and values of the
last few sequences served are kept; the next prompt reads only the tokens after the ones it shares
with the closest of them, as llama.cpp's server (``cache_prompt``) and vLLM's automatic prefix caching
do. A prompt read in two pieces gives the same logits as one read whole, up to the rounding of the
matrix products (the greedy answers of the tests and the benchmark are the same).

The evaluate stage keeps one too, on a CPU (``PrefixCache.borrow``, which leaves the entry kept): a
retrieval arm puts the same chunks in front of several lines (``benchmarks/evaluate_speed.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any


def cache_argument(model: Any) -> str:
    """The name under which ``model`` takes a cache: transformers 5 calls it ``cache``
    (``past_key_values`` still works, with a warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def plain_cache(model: Any) -> bool:
    """Whether ``model``'s cache is plain keys and values per layer, which can be padded on the left and
    cut back to a prefix (a sliding-window layer drops its oldest entries; a recurrent state has none to
    cut)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def keeps_logits(model: Any) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (positions whose logits it computes)."""
    supports = getattr(model, "_supports_logits_to_keep", None)
    return bool(supports()) if callable(supports) else False


def last_logit_only(model: Any) -> dict[str, Any]:
    """The forward arguments that compute the logits of the last position alone, where ``model`` takes
    them (``keeps_logits``): a prompt read to write what follows it needs no others."""
    return {"logits_to_keep": 1} if keeps_logits(model) else {}


def left_padded(caches: Sequence[Any], masks: Sequence[Any], room: int = 0) -> tuple[Any, Any]:
    """The prompts' caches (plain ones: ``plain_cache``) and masks as one batch, each left-padded to the
    widest. ``room``: positions the batch's layers hold ready for the tokens it will decode
    (``repotune.roomy_cache``); 0 gives plain layers, which copy themselves whole on each token."""
    import torch
    import torch.nn.functional as F
    from transformers.cache_utils import DynamicCache

    from repotune.roomy_cache import RoomyLayer

    width = max(mask.shape[1] for mask in masks)
    merged = DynamicCache()
    for number in range(len(caches[0].layers)):
        keys, values = (
            _stacked([getattr(c.layers[number], part) for c in caches], width, room)
            for part in ("keys", "values")
        )
        if room:
            merged.layers.append(RoomyLayer(keys, values, width))
        else:
            merged.update(keys, values, number)
    mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in masks])
    return merged, mask


def with_room(cache: Any, room: int) -> Any:
    """``cache`` (a plain one: ``plain_cache``), its layers made ``RoomyLayer``s with room for ``room``
    positions after those they hold (an empty layer: for ``room`` in all), which ``generate`` then
    writes in place. A layer that holds positions is copied once into its room; the cache is changed
    and returned."""
    import torch.nn.functional as F
    from transformers.cache_utils import DynamicLayer

    from repotune.roomy_cache import RoomyLayer

    for number, layer in enumerate(cache.layers):
        if type(layer) not in (DynamicLayer, RoomyLayer):
            raise ValueError(f"layer {number} is a {type(layer).__name__}, not plain keys and values")
        if isinstance(layer, RoomyLayer):
            layer.reserve(room)
        elif not layer.is_initialized:
            cache.layers[number] = RoomyLayer(room=room)
        else:
            held = layer.keys.shape[2]
            keys, values = (F.pad(part, (0, 0, 0, room)) for part in (layer.keys, layer.values))
            cache.layers[number] = RoomyLayer(keys, values, held)
    return cache


def _stacked(parts: Sequence[Any], width: int, room: int) -> Any:
    """Tensors ``[rows, heads, length, dim]`` as one ``[all rows, heads, width + room, dim]``, each
    part's positions ending at ``width`` and zeros around them: padding, which the mask hides (a zero,
    unlike what an uninitialized tensor may hold, gives no NaN when attention weighs it by 0)."""
    first = parts[0]
    out = first.new_zeros((sum(p.shape[0] for p in parts), first.shape[1], width + room, first.shape[3]))
    row = 0
    for part in parts:
        out[row : row + part.shape[0], :, width - part.shape[2] : width] = part
        row += part.shape[0]
    return out


def row_cache(cache: Any, row: int, start: int, end: int | None = None) -> Any:
    """Row ``row`` of a batch's cache from column ``start`` on (a left-padded batch's padding cut off),
    or up to ``end`` (a right-padded one's), as a cache of its own: a copy, so that keeping it does not
    keep the whole batch's."""
    return _copied(cache, (slice(row, row + 1), slice(None), slice(start, end)))


def prefix_of(cache: Any, tokens: int) -> Any:
    """The first ``tokens`` positions of a plain cache as a cache of their own, which reading on from
    leaves ``cache`` as it was."""
    return _copied(cache, (slice(None), slice(None), slice(None, tokens)))


def _copied(cache: Any, part: tuple[slice, ...]) -> Any:
    """``part`` of every layer's keys and values (``[batch, heads, positions, ...]``) as a new cache. A
    copy: a plain layer's ``update`` concatenates what it is given onto its own (empty) tensor, and
    never writes in the tensors it was given or returned."""
    from transformers.cache_utils import DynamicCache

    own = DynamicCache()
    for number, layer in enumerate(cache.layers):
        own.update(layer.keys[part], layer.values[part], number)
    return own


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """The caches of the last few token sequences served, for the next prompts that start as one of
    them does.

    ``take(ids)`` before ``generate`` gives the cache to pass it: the kept one that shares the most
    tokens with the prompt ``ids`` (at least ``min_tokens``), cut back to them (never all of ``ids``:
    the last prompt token is read to predict the first new one), or a new empty one. ``keep(cache,
    sequence)`` after ``generate`` keeps it with the tokens it holds: the prompt and what was written
    (all of it but the last token, which was never read). A sequence, not only its prompt: the next
    prompt of an editor often holds the completion its user accepted, and a row that gave way to others
    (``repotune.serving.batching``) resumes with its prompt and what it wrote. ``entries`` caches are
    kept, the least recently used dropped first; what ``take`` hands out is no longer kept, so a
    ``generate`` that fails leaves nothing half-written behind.
    """

    def __init__(self, model: Any, min_tokens: int, entries: int = 4) -> None:
        if min_tokens < 1 or entries < 1:
            raise ValueError("min_tokens and entries must be at least 1")
        self.model = model
        self.min_tokens = min_tokens
        self.entries = entries
        self._kept: list[tuple[tuple[int, ...], Any]] = []  # most recently used first
        self.hits = 0
        """Prompts that reused a kept prefix."""
        self.reused_tokens = 0
        """Prompt tokens not read again, over all hits."""

    def __len__(self) -> int:
        return len(self._kept)

    def reusable(self, ids: Sequence[int]) -> int:
        """How many tokens of the prompt ``ids`` ``take`` would hand out kept (0: none)."""
        return self._closest(ids)[1]

    def take(self, ids: Sequence[int]) -> tuple[Any, int]:
        """A cache for the prompt ``ids`` and how many of its tokens it holds already."""
        from transformers.cache_utils import DynamicCache

        best, shared = self._closest(ids)
        if best is None:
            return DynamicCache(config=self.model.config), 0
        _, cache = self._kept.pop(best)
        extra = cache.get_seq_length() - shared
        if extra > 0:
            cache.crop(-extra)  # a negative count: tokens to remove from the end
        self.hits += 1
        self.reused_tokens += shared
        return cache, shared

    def borrow(self, ids: Sequence[int]) -> tuple[Any, int]:
        """What ``take`` gives, but the kept entry stays kept (as the most recently used) and the cache
        handed out holds a copy of its shared tokens (``prefix_of``); ``(None, 0)`` when nothing kept
        shares enough. For a caller that reads many prompts starting alike, one after another: the
        evaluate stage, whose retrieval arms put the same retrieved chunks in front of the lines of a
        file."""
        best, shared = self._closest(ids)
        if best is None:
            return None, 0
        entry = self._kept.pop(best)
        self._kept.insert(0, entry)
        self.hits += 1
        self.reused_tokens += shared
        return prefix_of(entry[1], shared), shared

    def _closest(self, ids: Sequence[int]) -> tuple[int | None, int]:
        """The kept entry that shares the most tokens with ``ids`` (at least ``min_tokens``; never all
        of them) and how many, or ``(None, 0)``."""
        best, shared = None, 0
        for number, (kept, _) in enumerate(self._kept):
            common = min(shared_prefix(kept, ids), len(ids) - 1)
            if common > shared:
                best, shared = number, common
        return (best, shared) if shared >= self.min_tokens else (None, 0)

    def keep(self, cache: Any, sequence: Sequence[int]) -> None:
        """Keep ``cache``, which ``generate`` filled from ``sequence`` (the prompt and what it wrote)."""
        held = cache.get_seq_length()
        if held > len(sequence) or held < self.min_tokens:  # not this sequence's, or too short to reuse
            return
        self._kept.insert(0, (tuple(sequence[:held]), cache))
        del self._kept[self.entries :]
