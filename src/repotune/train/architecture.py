"""What training needs to know of a model's architecture, read from its config alone (no weights):
its parameter count, a peak-memory estimate for one training step, and the LoRA target modules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from repotune.errors import RepotuneError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig


def _load_config(config_path_or_folder: Path | str) -> PretrainedConfig:
    from transformers import AutoConfig

    path = Path(config_path_or_folder).expanduser()
    if path.is_file():
        path = path.parent if path.name == "config.json" else path
    if path.is_dir() and not (path / "config.json").is_file():
        raise RepotuneError(f"{path} has no config.json")
    if not path.exists():
        raise RepotuneError(f"model config {path} does not exist")
    return AutoConfig.from_pretrained(str(path))


def _meta_model(config: PretrainedConfig) -> torch.nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    # On the meta device, parameters have shapes but no storage: exact counts for a 70B model in ms.
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameter_count(folder: Path | str) -> int:
    """The exact number of parameters of the model in ``folder`` (tied weights counted once), from its
    config alone: no weights are read."""
    model = _meta_model(_load_config(folder))
    return sum(p.numel() for p in model.parameters())


def estimate_training_memory_gb(
    config_path_or_folder: Path | str,
    method: str,
    seq_len: int,
    micro_batch_size: int,
    dtype_bytes: int,
    *,
    lora_rank: int = 16,
    gradient_checkpointing: bool = False,
) -> float:
    """A rough peak accelerator memory for one training step, in GiB (2**30 bytes).

    Meant to pick a GPU size or refuse a hopeless recipe early, not to plan to the last megabyte;
    it adds up, in bytes (P = parameters, T = trainable parameters, L = layers, h = hidden size,
    V = vocabulary, s = seq_len, b = micro_batch_size, d = dtype_bytes):

    - weights: P * d (``lora``, ``full``), or P * 0.56 for ``qlora`` (4-bit NF4 plus block scales);
    - training state: for ``full``, gradients P * d plus AdamW's two float32 moments 8 * P; for
      ``lora``/``qlora``, T = rank * (in + out) summed over the attention and MLP projections, each
      adapter parameter held in float32 with its gradient and two moments (16 * T);
    - activations: 34 * s * b * h * d / 2 per layer (Korthikanti et al. 2022, without attention scores,
      which fused attention does not keep), or with gradient checkpointing one layer's worth plus each
      layer's input (s * b * h * d);
    - logits and their gradient in float32: 2 * s * b * V * 4;
    - plus 20 % for the allocator, CUDA context and temporaries.
    """
    if method not in ("lora", "qlora", "full"):
        raise RepotuneError(f"unknown training method {method!r}; use lora, qlora or full")
    if min(seq_len, micro_batch_size, dtype_bytes) <= 0:
        raise RepotuneError("seq_len, micro_batch_size and dtype_bytes must be positive")
    config = _load_config(config_path_or_folder)
    params = sum(p.numel() for p in _meta_model(config).parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    layers = text.num_hidden_layers
    vocab = text.vocab_size
    heads = getattr(text, "num_attention_heads", None) or 1
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    inter = getattr(text, "intermediate_size", None) or 4 * hidden

    if method == "full":
        state = params * dtype_bytes + params * dtype_bytes + 8 * params
    else:
        q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        per_layer = (
            (hidden + q_dim)  # q
            + 2 * (hidden + kv_dim)  # k, v
            + (q_dim + hidden)  # o
            + 3 * (hidden + inter)  # gate, up, down
        )
        trainable = lora_rank * per_layer * layers
        weights = params * 0.56 if method == "qlora" else params * dtype_bytes
        state = weights + 16 * trainable

    tokens = seq_len * micro_batch_size
    layer_activations = 34 * tokens * hidden * dtype_bytes / 2
    if gradient_checkpointing:
        activations = layer_activations + layers * tokens * hidden * dtype_bytes
    else:
        activations = layers * layer_activations
    logits = 2 * tokens * vocab * 4
    return round(1.2 * (state + activations + logits) / 2**30, 3)


# MoE routers are Linear layers too, but adapting them destabilises expert routing.
_NOT_LORA_TARGETS = {"gate", "router", "shared_expert_gate", "lm_head"}


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """The names (last dotted component, as PEFT's ``target_modules`` takes them) of the linear
    projections inside the model's repeated blocks, in order of first appearance.

    Llama, Qwen2, Mistral: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. GPT-2 (whose
    projections are transformers' Conv1D): c_attn, c_proj, c_fc. Other architectures get their own
    names the same way; the output head and MoE routers are left out.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    names: list[str] = []
    for qualified, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | Conv1D):
            continue
        parts = qualified.split(".")
        # Decoder blocks sit in a ModuleList, so their modules have a numeric path component.
        if not any(part.isdigit() for part in parts) or parts[-1] in _NOT_LORA_TARGETS:
            continue
        if parts[-1] not in names:
            names.append(parts[-1])
    if not names:
        raise RepotuneError(
            f"found no linear layers inside the blocks of {type(model).__name__}; set the recipe's "
            "LoRA target modules explicitly"
        )
    return names
