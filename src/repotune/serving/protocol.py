"""Typed requests for every route, with one set of generation options and one set of bounds.

``GenerationOptions`` (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``,
``presence_penalty``, ``frequency_penalty``) is the base of
the OpenAI completions and chat requests and of a KServe v1 instance (or v2 request parameters), so a
value one route refuses, every route refuses. Bounds are OpenAI's: temperature 0 to 2, top_p above 0
and at most 1, seed a signed 64-bit integer, penalties -2 to 2. Stop strings are not limited to
OpenAI's 4: editor plugins send a dozen or more (vLLM and llama.cpp take them), so the bound is on
their number and total length.

Validation is strict (no strings for numbers, no booleans for integers, no NaN); fields a route does
not know are ignored, as vLLM ignores them, since clients send vendor extensions. A refusal is a
``ServingError`` (400) naming the field, e.g. ``messages.0.role``.

Response bodies are the ``openai`` package's own models (``Completion``, ``ChatCompletion``,
``ChatCompletionChunk``), so their shapes are OpenAI's by construction.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from repotune.serving.batching import SamplingParams
from repotune.serving.errors import ServingError, bad_request

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 4096  # all stop strings of a request together, in characters

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)
# OpenAI's field names; pydantic's union member tags are type names (`str`, `list[int]`, class names).
_FIELD = re.compile(r"(?!(?:str|int|float|bool|dict|list|none)$)[a-z_][a-z0-9_]*")

Request = TypeVar("Request", bound=BaseModel)


class GenerationOptions(BaseModel):
    """What every route may say about one generation; ``None`` leaves the route's default."""

    model_config = _STRICT

    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate; the server's cap and the context length are checked by the model."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        if sum(len(s) for s in stops) > MAX_STOP_CHARS:
            raise ValueError(f"the stop strings may hold at most {MAX_STOP_CHARS} characters together")
        return stop

    def sampling(self, default_temperature: float, line_penalty: float = 0.0) -> SamplingParams:
        """How to decode; ``line_penalty`` (the server's line repeat penalty) applies only when the
        request sets neither OpenAI penalty: one that does, even to 0, decodes as OpenAI's API says."""
        temperature = default_temperature if self.temperature is None else self.temperature
        own = self.presence_penalty is not None or self.frequency_penalty is not None
        return SamplingParams(
            temperature=temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            line_penalty=0.0 if own else line_penalty,
        )

    def stops(self) -> tuple[str, ...]:
        """The stop strings, empty ones dropped (an empty string would end every completion at once)."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stops if s)


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool | None = None


class OpenAIRequest(GenerationOptions):
    """Fields the completions and chat requests share."""

    model: str
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def refuse_unsupported(self) -> None:
        """Parameters this server cannot honour are refused by name rather than silently ignored."""
        if self.logit_bias:
            raise _unsupported("logit_bias")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(OpenAIRequest):
    """``POST /openai/v1/completions``.

    Extensions (send them with the openai client's ``extra_body``): ``file_path``, the path of the file
    being completed: it puts the training file header in front of the prefix, as ``code_prompt`` /
    ``fim_prompt`` do in training and in the evaluate stage, and the file's own chunks are not retrieved;
    ``retrieval``, ``true`` or ``false`` to have retrieved cross-file context put in front of the prompt
    or not, whatever the server's default (``repotune.serving.retrieval``); ``min_confidence``, from 0
    to 1: a greedy completion ends before its first line the model was less sure of (the server's
    ``--min-confidence`` otherwise; ``ServeSettings.min_confidence``).
    """

    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=5)
    file_path: str | None = None
    retrieval: bool | None = None
    min_confidence: float | None = Field(None, ge=0, le=1)

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.scores_prompt and self.stream:
            raise _unsupported(
                "echo",
                "`echo` with `logprobs` scores the prompt, which is returned with whole completions; send "
                "the request without `stream`",
            )
        if self.scores_prompt and self.file_path is not None:
            raise bad_request(
                "`echo` with `logprobs` scores the prompt as given, without a file header; send it "
                "without `file_path`",
                param="file_path",
            )
        if self.scores_prompt and self.retrieval:
            raise bad_request(
                "`echo` with `logprobs` scores the prompt as given, without retrieved context; send it "
                "without `retrieval`",
                param="retrieval",
            )
        if (self.best_of or 1) > 1:
            raise _unsupported("best_of", "`best_of` greater than 1 is not supported")
        if self.echo and self.suffix is not None:
            raise bad_request("`echo` cannot be combined with `suffix`", param="echo")

    @property
    def scores_prompt(self) -> bool:
        """``echo`` with ``logprobs``: the prompt's own tokens are scored (how lm-evaluation-harness asks
        for a text's log-likelihood), so the prompt is read as given: no file header, no retrieved
        context, no trailing whitespace held back."""
        return bool(self.echo) and self.logprobs is not None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif prompt and isinstance(prompt[0], int):
            items = [prompt]  # one prompt of token ids
        else:
            items = list(prompt)
        if not items:
            raise bad_request("`prompt` is empty", param="prompt")
        return items


class ContentPart(BaseModel):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` can be served."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    type: str


class ChatCompletionRequest(OpenAIRequest):
    """``POST /openai/v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    retrieval: bool | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.retrieval:
            raise _unsupported(
                "retrieval",
                "retrieved context is put in front of completions (/openai/v1/completions), not chat "
                "conversations; send the chat request without `retrieval`",
            )
        for name in ("tools", "functions", "audio", "prediction", "web_search_options"):
            if getattr(self, name):
                raise _unsupported(name)
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("`top_logprobs` needs `logprobs` set to true", param="top_logprobs")
        if self.response_format is not None and self.response_format.type != "text":
            raise _unsupported("response_format", "only text responses are supported")

    @property
    def limit_param(self) -> str:
        """The field that sets the completion's length: ``max_completion_tokens`` (OpenAI's newer name)
        when given, else ``max_tokens``."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def text_messages(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` with text content, for ``render_chat``."""
        if not self.messages:
            raise bad_request("`messages` is empty", param="messages")
        messages: list[dict[str, str]] = []
        for index, message in enumerate(self.messages):
            if message.role in ("tool", "function"):
                raise _unsupported(f"messages.{index}.role", f"{message.role} messages are not supported")
            content = message.content
            if isinstance(content, list):
                if any(part.type != "text" or part.text is None for part in content):
                    raise _unsupported(f"messages.{index}.content", "only text content parts are supported")
                content = "".join(part.text or "" for part in content)
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": content or ""})
        return messages


class Instance(GenerationOptions):
    """One prompt of a KServe v1 ``:predict`` request (``{"instances": [...]}``), or one prompt of a v2
    ``infer`` request with the request's parameters. Greedy unless ``temperature`` says otherwise."""

    prompt: str
    suffix: str | None = None
    file_path: str | None = None
    retrieval: bool | None = None
    min_confidence: float | None = Field(None, ge=0, le=1)


def _unsupported(param: str, message: str | None = None) -> ServingError:
    return bad_request(
        message or f"`{param}` is not supported by this server", param=param, code="unsupported"
    )


def parse_json(body: bytes | str) -> Any:
    """The request body as JSON; 400 when it is not (the depth was checked before, by ``BodyGuard``)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}", code="invalid_json") from None


def validated(kind: type[Request], data: Any, prefix: str | None = None) -> Request:
    """``data`` as a ``kind``; a 400 naming the first field that failed (under ``prefix``, if given)."""
    if not isinstance(data, dict):
        raise bad_request(
            f"{prefix} must be a JSON object" if prefix else "the request body must be a JSON object",
            param=prefix,
        )
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        raise from_validation(err, prefix) from None


def from_validation(err: ValidationError, prefix: str | None = None) -> ServingError:
    """A 400 naming the field that failed, e.g. ``messages.0.role``.

    Union members (``str``, ``list[str]``...) each add a location part and an error of their own; those
    parts are dropped, and the choices of a failed literal (a message ``role``) are listed together.
    """

    def field_path(loc: tuple[Any, ...]) -> list[str]:
        return [str(p) for p in loc if isinstance(p, int) or _FIELD.fullmatch(str(p))]

    errors = err.errors(include_url=False, include_input=False)
    first = errors[0]
    path = field_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    choices = [
        e["ctx"]["expected"]
        for e in errors
        if e["type"] == "literal_error" and field_path(e["loc"]) == path and "ctx" in e
    ]
    if len(choices) > 1:
        message = f"Input should be {' or '.join(choices)}"
    param = ".".join([prefix, *path] if prefix else path) or None
    return bad_request(f"{param}: {message}" if param else message, param=param)


def request_schema(kind: type[BaseModel]) -> dict[str, Any]:
    """``kind``'s JSON schema with its definitions written in place, for an OpenAPI request body (whose
    ``#/...`` references would point at the document's root, not at the schema's ``$defs``)."""
    schema = kind.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)
