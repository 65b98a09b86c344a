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
"""Positions added beyond what an update needs when a layer runs out of room."""


class RoomyLayer(DynamicLayer):
    """A plain layer (a ``DynamicLayer`` to transformers) over ``keys`` and ``values`` of shape
    ``[batch, heads, capacity, dim]``, holding their first ``length`` positions; ``self.keys`` and
    ``self.values`` are views of them, as long as what is held."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
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
        if end > self._room[0].shape[2]:
            more = end - self._room[0].shape[2] + GROWTH
            self._room = tuple(torch.nn.functional.pad(t, (0, 0, 0, more)) for t in self._room)
        for held, new in zip(self._room, (key_states, value_states), strict=True):
            held[:, :, self._length : end] = new
        self._length = end
        self._show()
        return self.keys, self.values

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
