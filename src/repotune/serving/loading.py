"""Loading a model to serve, and the name clients call it by.

A model is served from one of:

- a merged model folder, as ``repotune train`` writes it (weights, tokenizer, ``train_summary.json``;
  its ``adapter/`` subfolder is not needed, the merged weights already hold it);
- a base model plus a LoRA adapter folder (PEFT): ``adapter=`` names the adapter, or the model folder
  itself is an adapter folder whose ``adapter_config.json`` names its base;

each a local folder or an ``s3://`` URI (fetched once into a temporary folder; the object store is
configured by the environment variables ``repotune.storage`` documents).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
TRAIN_SUMMARY = "train_summary.json"
# MLflow writes this file (YAML: model_name, model_version) into a folder it downloads from the model
# registry (`mlflow artifacts download -u models:/NAME/VERSION`).
REGISTERED_MODEL_META = "registered_model_meta"
FALLBACK_NAME = "repotune"
# The name appears in URL paths (`/v1/models/NAME:predict`).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip", ".git")


def default_model_name(source: str | Path) -> str:
    """The model folder's (or the URI's last path part's) name, else ``repotune``."""
    text = str(source).rstrip("/")
    name = text.rsplit("/", 1)[-1] if text.startswith(("s3://", "minio://")) else Path(text).resolve().name
    return name if _SAFE_NAME.match(name) else FALLBACK_NAME


def served_names(folder: Path, source: str | Path, explicit: str | None = None) -> list[str]:
    """The names a model answers to, the one it is listed under first.

    In order: ``explicit`` (``--model-name``); the registered model name MLflow recorded when the folder
    was downloaded from its registry; the repository the model was trained on (``train_summary.json``
    names the data's source); the folder's name (``model`` for pipeline outputs). Names that cannot sit
    in a URL path are skipped; nothing left gives ``repotune``.
    """
    candidates = [explicit, registered_name(folder), repository_name(folder), default_model_name(source)]
    names: list[str] = []
    for name in candidates:
        if name and _SAFE_NAME.match(name) and name not in names:
            names.append(name)
    return names or [FALLBACK_NAME]


def registered_name(folder: Path) -> str | None:
    """``model_name`` from MLflow's ``registered_model_meta`` in ``folder``, if there is one."""
    import yaml

    path = folder / REGISTERED_MODEL_META
    if not path.is_file():
        return None
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        log.warning("ignoring unreadable %s", path)
        return None
    name = meta.get("model_name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def repository_name(folder: Path) -> str | None:
    """The repository's name from the data source ``train_summary.json`` records (a git URL,
    ``github:OWNER/REPO``, a local folder or an archive), in ``folder`` or, for an ``adapter/``
    folder, in the training output around it."""
    around = [folder.parent] if (folder / ADAPTER_CONFIG).is_file() else []
    for candidate in (folder, *around):
        path = candidate / TRAIN_SUMMARY
        if not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring unreadable %s", path)
            return None
        data = summary.get("data") if isinstance(summary, dict) else None
        source = data.get("dataset.source") if isinstance(data, dict) else None
        return _repository_from_source(source) if isinstance(source, str) else None
    return None


def _repository_from_source(source: str) -> str | None:
    # The last path part of a URL (https://, ssh://, file://, git@host:org/repo), of github:OWNER/REPO,
    # or of a local path.
    name = re.split(r"[/:\\]", source.strip().rstrip("/"))[-1]
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name or None


def check_source(source: str | Path, what: str = "model") -> None:
    """A local ``source`` must be a folder (checked before anything heavy loads); ``s3://`` passes."""
    from repotune.storage import is_s3_uri

    if isinstance(source, str) and is_s3_uri(source):
        return
    path = Path(source).expanduser()
    if not path.is_dir():
        raise RepotuneError(f"{what} {path} is not a folder (give the folder `repotune train` wrote)")


def _local_folder(source: str | Path, what: str, scratch: list[Path]) -> Path:
    """A local folder for ``source``: itself, or a fresh copy of an ``s3://`` prefix."""
    from repotune.storage import fetch, is_s3_uri

    if isinstance(source, str) and is_s3_uri(source):
        target = Path(tempfile.mkdtemp(prefix="repotune-serve-"))
        scratch.append(target)
        log.info("fetching %s %s", what, source)
        return fetch(source, target / "model")
    check_source(source, what)
    return Path(source).expanduser()


def _device_and_dtype(device: str | None) -> tuple[str, Any]:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RepotuneError(f"--device {device}: no CUDA device is available")
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    folder: Path
    """The local folder the weights (or the adapter) came from."""
    scratch: list[Path]
    """Temporary folders (s3:// copies) to delete when the model is unloaded."""


def load_model(
    source: str | Path, *, adapter: str | Path | None = None, device: str | None = None
) -> LoadedModel:
    """Load a merged model folder, or a base model with a LoRA adapter merged in, for generation.

    ``source`` and ``adapter`` are local folders or ``s3://`` URIs. When ``source`` itself is an
    adapter folder (``adapter_config.json`` without ``config.json``), its base is the model its
    config names, resolved like a recipe's ``base_model`` (an alias, a folder, ``s3://`` or a Hub id).
    The tokenizer comes from the adapter folder, else from the ``repotune train`` output around it
    (which carries the FIM tokens the adapter was trained with), else from the base.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch: list[Path] = []
    try:
        folder = _local_folder(source, "model", scratch)
        adapter_dir = _local_folder(adapter, "adapter", scratch) if adapter is not None else None
        if adapter_dir is None and not (folder / "config.json").is_file():
            if not (folder / ADAPTER_CONFIG).is_file():
                raise RepotuneError(
                    f"{source} holds neither a model (config.json) nor a LoRA adapter ({ADAPTER_CONFIG})"
                )
            adapter_dir, folder = folder, _adapter_base(folder)
        if not (folder / "config.json").is_file():
            raise RepotuneError(f"{folder} has no config.json; is it a Hugging Face model folder?")
        device, dtype = _device_and_dtype(device)
        tokenizer_dir = folder
        if adapter_dir is not None:
            from repotune.models import has_tokenizer

            if not (adapter_dir / ADAPTER_CONFIG).is_file():
                raise RepotuneError(f"adapter folder {adapter} has no {ADAPTER_CONFIG}")
            for candidate in (adapter_dir, adapter_dir.parent):
                if has_tokenizer(candidate):
                    tokenizer_dir = candidate
                    break
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar of weights loaded, redrawn with \r, in every log
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        if adapter_dir is not None:
            from peft import PeftModel

            # Tokens added in training (FIM) live in the adapter as trained rows of a resized embedding.
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        model.to(device).eval()
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.requires_grad_(False)  # serving never trains; generation runs under inference_mode
    except Exception:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return LoadedModel(model=model, tokenizer=tokenizer, folder=adapter_dir or folder, scratch=scratch)


def _adapter_base(adapter_dir: Path) -> Path:
    from repotune.models import resolve_base_model

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise RepotuneError(f"{adapter_dir / ADAPTER_CONFIG} names no base model; serve BASE --adapter DIR")
    return resolve_base_model(base)


def context_length(model: Any, tokenizer: Any) -> int:
    """Most tokens (prompt plus completion) the model takes, in tokens."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    # Tokenizers without a limit report a huge sentinel (int(1e30)); 2048 when nothing says.
    known = [n for n in limits if isinstance(n, int) and 0 < n < 10**9]
    return min(known) if known else 2048
