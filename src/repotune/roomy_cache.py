"""A cache layer that decodes in place: what ``repotune.kvcache.left_padded`` gives a batch about to
decode, when asked for room.

transformers' ``DynamicLayer.update`` concatenates each new position onto the keys and values, which
copies the whole cache into a new tensor on every token. On a CPU, decoding a batch of rows with long
prompts (a retrieval arm's: 500 to 800 tokens) spent about as long on those copies as on attending
over them (``benchmarks/evaluate_speed.py``). ``RoomyLayer`` keeps its keys and values at the front
of tensors with room for the tokens to come, and writes each one in place. The numbers are the same:
the keys and values are, and attention reads the same positions.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

GROWTH = 64
"""Positions added beyond what an update needs when a layer runs out of room (at least)."""


class RoomyLayer(DynamicLayer):
    """A plain layer (a ``DynamicLayer`` to transformers) over ``keys`` and ``values`` of shape
    ``[batch, heads, capacity, dim]``, holding their first ``length`` positions; ``self.keys`` and
    ``self.values`` are views of them, as long as what is held.

    Without ``keys`` and ``values``, an empty layer (as transformers' own before their first update):
    its first update makes room for ``room`` positions, or for what it writes and ``GROWTH`` more."""

    def __init__(
        self,
        keys: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        length: int = 0,
        room: int = 0,
    ) -> None:
        super().__init__()
        self._wanted = room
        self._length = 0
        if keys is None or values is None:
            if keys is not values or length:
                raise ValueError("an empty layer takes neither keys nor values nor a length")
            return
        if keys.shape != values.shape or not 0 <= length <= keys.shape[2]:
            raise ValueError(f"keys {tuple(keys.shape)}, values {tuple(values.shape)}, length {length}")
        self.device, self.is_initialized = keys.device, True
        self._room, self._length = (keys, values), length
        self._show()

    def _show(self) -> None:
        keys, values = self._room
        self.keys, self.values = keys[:, :, : self._length], values[:, :, : self._length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._room, self._length = (key_states[:, :, :0], value_states[:, :, :0]), 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[2]
        if end > self.capacity:
            self._grow(self._wanted if self._wanted >= end else end + GROWTH)
        for held, new in zip(self._room, (key_states, value_states), strict=True):
            held[:, :, self._length : end] = new
        self._length = end
        self._show()
        return self.keys, self.values

    @property
    def capacity(self) -> int:
        """Positions the layer can hold before it grows (0 before its first update)."""
        return self._room[0].shape[2] if self.is_initialized else 0

    @property
    def room(self) -> int:
        """Positions the layer can take before it grows (before its first update: the room it will make,
        or 0 for what it writes and ``GROWTH`` more)."""
        return self.capacity - self._length if self.is_initialized else self._wanted

    def reserve(self, room: int) -> None:
        """Makes room for ``room`` positions after those held, growing (one copy) where there is less."""
        if not self.is_initialized:
            self._wanted = max(self._wanted, room)
        elif self._length + room > self.capacity:
            self._grow(self._length + room)

    def _grow(self, capacity: int) -> None:
        more = capacity - self.capacity
        self._room = tuple(torch.nn.functional.pad(t, (0, 0, 0, more)) for t in self._room)

    def reset(self) -> None:
        super().reset()
        self._length = 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drops the last ``-tokens_to_remove`` positions (a negative count, as ``DynamicLayer.crop``)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if self.is_initialized:
            self._length = max(self._length + tokens_to_remove, 0)
            self._show()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._room = tuple(t.repeat_interleave(repeats, dim=0) for t in self._room)
        self._show()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._room = tuple(t[indices, ...] for t in self._room)
        self._show()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._room = tuple(t.index_select(0, beam_idx.to(t.device)) for t in self._room)
        self._show()
