"""A tiny model to serve in tests: random weights, a real (tiny) tokenizer with FIM and chat tokens."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_tokenizer import make_tiny_tokenizer

from repotune.data.transforms import ensure_fim_tokens
from repotune.models import make_tiny_model


def make_serving_model(folder: Path, *, fim: bool = True) -> Path:
    """A tiny Llama (vocabulary ~300 tokens) with a ChatML template and, with ``fim``, the FIM tokens.

    It is built in about a second and generates in milliseconds; what it writes is noise, so tests
    assert on shapes, counts, determinism and errors rather than on content.
    """
    tokenizer = make_tiny_tokenizer(chat_template=True)
    if fim:
        ensure_fim_tokens(tokenizer)
    return make_tiny_model(folder, tokenizer=tokenizer)
