"""The KServe predictor: one ``kserve.Model`` over a trained model, and the prompt rules serving shares.

A model is served from one of:

- a merged model folder, as ``repotune train`` writes it (weights, tokenizer, ``train_summary.json``;
  its ``adapter/`` subfolder is not needed, the merged weights already hold it);
- a base model plus a LoRA adapter folder (PEFT): ``adapter=`` names the adapter, or the model folder
  itself is an adapter folder whose ``adapter_config.json`` names its base;

each a local folder or an ``s3://`` URI (fetched once into a temporary folder; the object store is
configured by the environment variables ``repotune.storage`` documents).

Prompts are built with ``repotune.data.transforms`` (``fim_prompt``, ``render_chat``) and tokenized
the way training tokenized its examples (``encode_prompt``), so serving cannot drift from training.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError
from repotune.serving._kserve import InferOutput, InferRequest, InferResponse, InvalidInput, kserve
from repotune.serving.batching import Batcher, Completed, GenerationRequest, SamplingParams
from repotune.serving.errors import ServingError, bad_request

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# End-of-turn tokens of common chat templates: generation stops on them as on EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching knobs of one served model."""

    max_batch_size: int = 8
    """Most requests (rows) in one ``generate`` call."""
    max_tokens: int = 512
    """Server cap on ``max_tokens`` per request, in tokens; larger requests get a 400."""
    default_max_tokens: int = 16
    """``max_tokens`` of a completions request that sets none (OpenAI's default), in tokens."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more requests before it starts a batch, in milliseconds."""
    max_queue: int = 256
    """Most requests waiting for a batch; more get a 429."""
    request_timeout_s: float = 120.0
    """Seconds a request may take from arrival to its last token (queue wait included); then a 504."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted, in bytes; larger bodies get a 413."""
    max_n: int = 8
    """Most choices (``n`` times the number of prompts) one request may ask for."""
    device: str | None = None
    """``cuda``, ``cuda:1``, ``cpu``...; default: CUDA when available, else the CPU."""

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_tokens", "default_max_tokens", "max_queue", "max_body_bytes",
                     "max_n"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RepotuneError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_wait_ms < 0:
            raise RepotuneError(f"batch_wait_ms must not be negative, got {self.batch_wait_ms!r}")
        if self.request_timeout_s <= 0:
            raise RepotuneError(f"request_timeout_s must be positive, got {self.request_timeout_s!r}")


def default_model_name(source: str | Path) -> str:
    """The served name: the model folder's (or the URI's last path part's) name, else ``repotune``.

    The name appears in URL paths (``/v1/models/NAME:predict``), so names with other characters than
    letters, digits, ``_``, ``.`` and ``-`` fall back to ``repotune``.
    """
    text = str(source).rstrip("/")
    name = text.rsplit("/", 1)[-1] if text.startswith(("s3://", "minio://")) else Path(text).resolve().name
    return name if _SAFE_NAME.match(name) else "repotune"


def _local_folder(source: str | Path, what: str, scratch: list[Path]) -> Path:
    """A local folder for ``source``: itself, or a fresh copy of an ``s3://`` prefix."""
    from repotune.storage import fetch, is_s3_uri

    if isinstance(source, str) and is_s3_uri(source):
        target = Path(tempfile.mkdtemp(prefix="repotune-serve-"))
        scratch.append(target)
        log.info("fetching %s %s", what, source)
        return fetch(source, target / "model")
    path = Path(source).expanduser()
    if not path.is_dir():
        raise RepotuneError(f"{what} {path} is not a folder (give the folder `repotune train` wrote)")
    return path


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


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
            if not (adapter_dir / ADAPTER_CONFIG).is_file():
                raise RepotuneError(f"adapter folder {adapter} has no {ADAPTER_CONFIG}")
            for candidate in (adapter_dir, adapter_dir.parent):
                if _has_tokenizer(candidate):
                    tokenizer_dir = candidate
                    break
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
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


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end a completion: the model's and tokenizer's EOS, and chat end-of-turn tokens."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return ids


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt, tokenized as ``repotune.data.packing`` tokenizes training text: no special
    tokens added, except a leading BOS for tokenizers that add one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def context_length(model: Any, tokenizer: Any) -> int:
    """Most tokens (prompt plus completion) the model takes, in tokens."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    # Tokenizers without a limit report a huge sentinel (int(1e30)); 2048 when nothing says.
    known = [n for n in limits if isinstance(n, int) and 0 < n < 10**9]
    return min(known) if known else 2048


class RepotuneModel(kserve.Model):
    """A causal LM behind a ``Batcher``, served by ``kserve.ModelServer``.

    KServe's v1 ``:predict`` takes ``{"instances": [PROMPT, ...]}`` where a prompt is a string or an
    object with ``prompt`` and optional ``suffix`` (fill in the middle), ``max_tokens``,
    ``temperature``, ``top_p`` and ``stop``; it answers ``{"predictions": [TEXT, ...]}``. The v2
    ``infer`` takes a BYTES input tensor of prompts (any name) with the same options as request
    parameters, and answers a BYTES output tensor ``text``. The OpenAI routes
    (``repotune.serving.openai_routes``) share this object's queue.
    """

    def __init__(
        self,
        name: str,
        source: str | Path,
        *,
        adapter: str | Path | None = None,
        settings: ServeSettings | None = None,
    ) -> None:
        super().__init__(name)
        self.source = source
        self.adapter = adapter
        self.settings = settings or ServeSettings()
        self.loaded: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.fim = False
        self.context = 0

    def load(self) -> bool:
        from repotune.data.transforms import has_fim_tokens

        self.loaded = load_model(self.source, adapter=self.adapter, device=self.settings.device)
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        self.fim = has_fim_tokens(tokenizer)
        self.context = context_length(model, tokenizer)
        self.batcher = Batcher(
            model,
            tokenizer,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            batch_wait_ms=self.settings.batch_wait_ms,
            eos_ids=eos_token_ids(model, tokenizer),
            model_name=self.name,
        )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.stop()
        if self.loaded is not None:
            for path in self.loaded.scratch:
                shutil.rmtree(path, ignore_errors=True)

    @property
    def tokenizer(self) -> Any:
        if self.loaded is None:
            raise ServingError(503, "the model is not loaded yet", type="server_error")
        return self.loaded.tokenizer

    def build_prompt(self, prompt: str, suffix: str | None = None, file_path: str | None = None) -> str:
        """The text to complete: ``prompt`` as it is, or with ``suffix`` a fill-in-the-middle prompt
        built by the training transform (``fim_prompt``); 400 when the model has no FIM tokens."""
        from repotune.data.transforms import fim_prompt

        if suffix is None:
            return prompt
        if not self.fim:
            raise bad_request(
                f"model {self.name} has no fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, "
                "<fim_middle>); send the request without `suffix`, or serve a model trained with FIM",
                param="suffix",
                code="fim_not_supported",
            )
        return fim_prompt(prompt, suffix, path=file_path, tokenizer=self.tokenizer)

    def request(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int | None,
        default_max_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        stop: tuple[str, ...] = (),
        param: str = "max_tokens",
    ) -> GenerationRequest:
        """A checked ``GenerationRequest``: the prompt fits the context and ``max_tokens`` is within
        (0, server cap] and fits after the prompt. ``max_tokens=None`` takes ``default_max_tokens``
        (``None``: as many as the cap and the context allow)."""
        cap = self.settings.max_tokens
        room = self.context - len(prompt_ids)
        if not prompt_ids:
            raise bad_request("the prompt is empty", param="prompt")
        if room <= 0:
            raise bad_request(
                f"this model's maximum context length is {self.context} tokens, and the prompt has "
                f"{len(prompt_ids)} tokens; shorten the prompt",
                param="messages" if param == "max_completion_tokens" else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = min(default_max_tokens or cap, cap, room)
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad_request(f"{param} must be a positive integer, got {max_tokens!r}", param=param)
        elif max_tokens > cap:
            raise bad_request(
                f"{param} is {max_tokens}, more than this server's cap of {cap} tokens", param=param
            )
        elif max_tokens > room:
            raise bad_request(
                f"this model's maximum context length is {self.context} tokens; the prompt has "
                f"{len(prompt_ids)} tokens and {param} asks for {max_tokens} more",
                param=param,
                code="context_length_exceeded",
            )
        return GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=max_tokens,
            sampling=sampling or SamplingParams(),
            stop=stop,
            timeout_s=self.settings.request_timeout_s,
        )

    def submit(self, request: GenerationRequest):
        if self.batcher is None or not self.ready:
            raise ServingError(503, "the model is not loaded yet", type="server_error")
        return self.batcher.submit(request)

    async def complete(self, options: dict[str, Any]) -> Completed:
        """One completion for a KServe v1/v2 instance (``prompt`` plus optional settings)."""
        prompt = options.get("prompt")
        if not isinstance(prompt, str):
            raise bad_request("each instance needs a string `prompt`", param="prompt")
        suffix, file_path = options.get("suffix"), options.get("file_path")
        if suffix is not None and not isinstance(suffix, str):
            raise bad_request("`suffix` must be a string", param="suffix")
        stop = options.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        try:
            sampling = SamplingParams(
                temperature=float(options.get("temperature", 0.0)), top_p=float(options.get("top_p", 1.0))
            )
        except (TypeError, ValueError):
            raise bad_request("temperature and top_p must be numbers") from None
        text = self.build_prompt(prompt, suffix, file_path if isinstance(file_path, str) else None)
        request = self.request(
            encode_prompt(self.tokenizer, text),
            max_tokens=options.get("max_tokens"),
            default_max_tokens=self.settings.default_max_tokens,
            sampling=sampling,
            stop=tuple(s for s in stop if isinstance(s, str) and s),
        )
        return await self.submit(request).result()

    async def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        """KServe v1 (a dict with ``instances``) or v2 (an ``InferRequest``); greedy unless asked."""
        import asyncio

        try:
            if isinstance(payload, InferRequest):
                options = dict(payload.parameters or {})
                prompts = _v2_prompts(payload)
                results = await asyncio.gather(*(self.complete({**options, "prompt": p}) for p in prompts))
                output = InferOutput(name="text", shape=[len(results)], datatype="BYTES",
                                     data=[r.text for r in results])  # fmt: skip
                return InferResponse(
                    response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=[output]
                )
            instances = payload.get("instances") if isinstance(payload, dict) else None
            if not isinstance(instances, list) or not instances:
                raise bad_request('expected {"instances": [PROMPT, ...]} with at least one prompt')
            options = [{"prompt": i} if isinstance(i, str) else i for i in instances]
            if not all(isinstance(o, dict) for o in options):
                raise bad_request("each instance is a prompt string or an object with `prompt`")
            results = await asyncio.gather(*(self.complete(o) for o in options))
            return {"predictions": [r.text for r in results]}
        except ServingError as err:
            if err.status >= 500:
                raise
            # KServe answers InvalidInput with a 400 and {"error": message}.
            raise InvalidInput(err.message) from None


def _v2_prompts(request: InferRequest) -> list[str]:
    if not request.inputs:
        raise bad_request("the request has no inputs; send a BYTES tensor of prompts")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise bad_request(f"input {tensor.name} is {tensor.datatype}; send the prompts as a BYTES tensor")
    data = tensor.data if isinstance(tensor.data, list) else tensor.as_numpy().ravel().tolist()
    prompts = [p.decode("utf-8") if isinstance(p, bytes) else p for p in data]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad_request("the BYTES input must hold one or more prompt strings")
    return prompts
