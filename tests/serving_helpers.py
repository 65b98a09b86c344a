"""A tiny model to serve in tests: random weights, a real (tiny) tokenizer with FIM and chat tokens."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_tokenizer import make_tiny_tokenizer

from repotune.data.transforms import FILENAME_TOKEN, ensure_fim_tokens
from repotune.models import make_tiny_model

QWEN_FIM = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")


def make_serving_model(folder: Path, *, fim: bool | str = True, header: bool = False) -> Path:
    """A tiny Llama (vocabulary ~300 tokens) with a ChatML template and, with ``fim``, StarCoder's FIM
    tokens (``fim="qwen"``: Qwen2.5-Coder's); with ``header``, ``<filename>`` as one token, as
    StarCoder's and SmolLM2's tokenizers have it.

    It is built in about a second and generates in milliseconds; what it writes is noise, so tests
    assert on shapes, counts, determinism and errors rather than on content.
    """
    tokenizer = make_tiny_tokenizer(chat_template=True)
    if fim == "qwen":  # FIM tokens of the model's own, as Qwen2.5-Coder's tokenizer has them
        tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_FIM)})
    elif fim:
        ensure_fim_tokens(tokenizer)
    if header:
        tokenizer.add_special_tokens({"additional_special_tokens": [FILENAME_TOKEN]})
    return make_tiny_model(folder, tokenizer=tokenizer)
