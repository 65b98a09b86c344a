"""OpenAI-compatible routes on KServe's FastAPI app: completions (with fill in the middle), chat, models.

kserve 0.21 ships OpenAI routes of its own, but they import vLLM's types and are skipped without vLLM
(a CUDA-only package), so these routes are registered on ``kserve.model_server.app`` instead. Request
bodies are checked against the ``openai`` package's own request types (``CompletionCreateParams``,
the chat ``CompletionCreateParams``), and responses are the ``openai`` package's response models
(``Completion``, ``ChatCompletion``, ``ChatCompletionChunk``), so the shapes are OpenAI's by
construction and the official client parses them.

Every refusal is a 4xx (or 429/503/504) with OpenAI's error body ``{"error": {"message", "type",
"param", "code"}}``, never a 500 or a hung connection. ``stream: true`` answers with server-sent
events ending with ``data: [DONE]``.

Extension: a completions request may carry ``file_path`` (send it with the client's ``extra_body``);
with ``suffix`` it puts the training file header in front of the prefix, as ``fim_prompt`` does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types import completion_create_params as completion_params
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import completion_create_params as chat_params
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel, TypeAdapter, ValidationError

from repotune.serving.batching import Completed, Handle, SamplingParams
from repotune.serving.errors import ServingError, bad_request
from repotune.serving.model import RepotuneModel, encode_prompt

PREFIX = "/openai/v1"
# OpenAI's field names; pydantic's union member tags are CamelCase class names, `list[...]` or these.
_FIELD = re.compile(r"(?!(?:str|int|float|bool|dict|list|none)$)[a-z_][a-z0-9_]*")
COMPLETION_PARAMS = TypeAdapter(completion_params.CompletionCreateParamsBase)
CHAT_PARAMS = TypeAdapter(chat_params.CompletionCreateParamsBase)
MAX_STOP_STRINGS = 4  # as OpenAI's API
# Parameters this server cannot honour; refused by name rather than silently ignored.
UNSUPPORTED_COMPLETION = ("logprobs", "logit_bias")
UNSUPPORTED_CHAT = ("tools", "functions", "logit_bias", "audio", "prediction", "web_search_options")


def error_response(err: ServingError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def register_openai_routes(app: FastAPI, model: RepotuneModel) -> None:
    """Add ``/openai/v1/models``, ``/openai/v1/completions`` and ``/openai/v1/chat/completions``."""
    router = APIRouter()

    async def list_models() -> JSONResponse:
        card = Model(id=model.name, created=int(time.time()), object="model", owned_by="repotune")
        return JSONResponse({"object": "list", "data": [card.model_dump(mode="json")]})

    async def completions(request: Request) -> Response:
        return await _guarded(_completions(model, request))

    async def chat_completions(request: Request) -> Response:
        return await _guarded(_chat_completions(model, request))

    router.add_api_route(f"{PREFIX}/models", list_models, methods=["GET"])
    router.add_api_route(f"{PREFIX}/completions", completions, methods=["POST"])
    router.add_api_route(f"{PREFIX}/chat/completions", chat_completions, methods=["POST"])
    app.include_router(router)


async def _guarded(work: Any) -> Response:
    try:
        return await work
    except ServingError as err:
        return error_response(err)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _validated(adapter: TypeAdapter, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return adapter.validate_python(body)
    except ValidationError as err:
        raise _from_validation(err) from None


def _from_validation(err: ValidationError, prefix: str | None = None) -> ServingError:
    """A 400 naming the field that failed, e.g. ``messages.0.role``.

    ``prefix`` is the field of a lazily validated iterable (``messages``, ``prompt``), whose errors
    pydantic reports relative to the iterable. Union members (``ChatCompletionUserMessageParam``...)
    each add their own location part and their own error; those parts are dropped, and the choices
    of a failed literal (a message ``role``) are listed together.
    """

    def field_path(loc: tuple[Any, ...]) -> list[str]:
        return [str(p) for p in loc if isinstance(p, int) or _FIELD.fullmatch(str(p))]

    errors = err.errors()
    first = errors[0]
    path = field_path(first["loc"])
    message = first["msg"]
    choices = [
        e["ctx"]["expected"]
        for e in errors
        if e["type"] == "literal_error" and field_path(e["loc"]) == path and "ctx" in e
    ]
    if len(choices) > 1:
        message = f"Input should be {' or '.join(choices)}"
    param = ".".join([prefix, *path] if prefix else path) or None
    return bad_request(f"{param}: {message}" if param else message, param=param)


def _check_common(model: RepotuneModel, body: dict[str, Any], unsupported: tuple[str, ...]) -> None:
    if body["model"] != model.name:
        raise ServingError(
            404,
            f"the model {body['model']!r} does not exist; this server serves {model.name!r}",
            param="model",
            code="model_not_found",
        )
    for name in unsupported:
        if body.get(name) not in (None, False, {}, []):
            raise bad_request(f"`{name}` is not supported by this server", param=name, code="unsupported")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad_request(f"`{name}` is not supported by this server", param=name, code="unsupported")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise bad_request("`stream` must be true or false", param="stream")


def _sampling(body: dict[str, Any]) -> SamplingParams:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    temperature = 1.0 if temperature is None else float(temperature)  # OpenAI's defaults
    top_p = 1.0 if top_p is None else float(top_p)
    if not 0.0 <= temperature <= 2.0:
        raise bad_request(f"temperature must be from 0 to 2, got {temperature}", param="temperature")
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"top_p must be greater than 0 and at most 1, got {top_p}", param="top_p")
    return SamplingParams(temperature=temperature, top_p=top_p, seed=body.get("seed"))


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop")
    return tuple(s for s in stops if s)


def _choices(model: RepotuneModel, body: dict[str, Any], prompts: int) -> int:
    n = body.get("n")
    n = 1 if n is None else n
    if n < 1 or n > model.settings.max_n:
        raise bad_request(f"n must be from 1 to {model.settings.max_n}, got {n}", param="n")
    if n * prompts > model.settings.max_queue:
        raise bad_request(f"{n * prompts} choices in one request is more than this server queues", param="n")
    return n


def _submit_all(model: RepotuneModel, requests: list[Any]) -> list[Handle]:
    handles: list[Handle] = []
    try:
        for request in requests:
            handles.append(model.submit(request))
    except ServingError:
        for handle in handles:
            handle.cancel()
        raise
    return handles


async def _merged(handles: list[Handle]) -> AsyncIterator[tuple[int, str | Completed]]:
    """Events of several handles as ``(choice index, text or Completed)``, in arrival order."""
    queue: asyncio.Queue[tuple[int, str | Completed | ServingError]] = asyncio.Queue()

    async def pump(index: int, handle: Handle) -> None:
        try:
            async for item in handle.stream():
                await queue.put((index, item))
        except ServingError as err:
            await queue.put((index, err))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, ServingError):
                raise item
            if isinstance(item, Completed):
                remaining -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for handle in handles:
            handle.cancel()


async def _results(handles: list[Handle]) -> list[Completed]:
    results: list[Completed | None] = [None] * len(handles)
    async for index, item in _merged(handles):
        if isinstance(item, Completed):
            results[index] = item
    return [r for r in results if r is not None]


def _usage(results: list[Completed], prompt: int) -> CompletionUsage:
    """Token counts; ``prompt`` counts each prompt once (as OpenAI does), however many choices it has."""
    completion = sum(r.completion_tokens for r in results)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json(warnings=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


def _stream(events: AsyncIterator[str], handles: list[Handle]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except ServingError as err:
            # Headers are gone already: the error travels as an event, which the openai client raises.
            yield _sse(err.body())
        else:
            yield "data: [DONE]\n\n"
        finally:
            for handle in handles:
                handle.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _completion_prompts(
    model: RepotuneModel, params: dict[str, Any], file_path: Any
) -> tuple[list[list[int]], list[str | None]]:
    """Token ids of each prompt, and each prompt's text (``None`` for prompts given as token ids).

    ``params`` is the validated request; ``file_path`` (this server's extension) is read from the raw
    body, since validation against OpenAI's type drops fields it does not know.
    """
    prompt = params.get("prompt")
    if prompt is None:
        raise bad_request("`prompt` is required", param="prompt")
    try:
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        else:
            # Iterable prompt forms are validated lazily by pydantic, as they are read here.
            items = list(prompt)
            if items and isinstance(items[0], int):
                items = [items]  # one prompt of token ids
            else:
                items = [p if isinstance(p, str) else list(p) for p in items]
    except ValidationError as err:
        raise _from_validation(err, "prompt") from None
    if not items:
        raise bad_request("`prompt` is empty", param="prompt")
    suffix = params.get("suffix")
    if file_path is not None and not isinstance(file_path, str):
        raise bad_request("`file_path` must be a string", param="file_path")
    vocab = len(model.tokenizer)
    ids: list[list[int]] = []
    texts: list[str | None] = []
    for item in items:
        if isinstance(item, str):
            text = model.build_prompt(item, suffix, file_path)
            ids.append(encode_prompt(model.tokenizer, text))
            texts.append(item)
            continue
        if suffix is not None:
            raise bad_request("`suffix` needs the prompt as text, not token ids", param="suffix")
        if not all(isinstance(t, int) and 0 <= t < vocab for t in item):
            raise bad_request(f"token ids in `prompt` must be integers from 0 to {vocab - 1}", param="prompt")
        ids.append(list(item))
        texts.append(None)
    return ids, texts


async def _completions(model: RepotuneModel, request: Request) -> Response:
    body = await _json_body(request)
    params = _validated(COMPLETION_PARAMS, body)
    _check_common(model, body, UNSUPPORTED_COMPLETION)
    if (params.get("best_of") or 1) > 1:
        raise bad_request("`best_of` greater than 1 is not supported", param="best_of", code="unsupported")
    echo = bool(params.get("echo"))
    if echo and params.get("suffix") is not None:
        raise bad_request("`echo` cannot be combined with `suffix`", param="echo")
    prompt_ids, prompt_texts = _completion_prompts(model, params, body.get("file_path"))
    prompt_tokens = sum(len(ids) for ids in prompt_ids)
    n = _choices(model, params, len(prompt_ids))
    sampling, stop = _sampling(params), _stop(params)
    requests = [
        model.request(
            ids,
            max_tokens=body.get("max_tokens"),
            default_max_tokens=model.settings.default_max_tokens,
            sampling=sampling,
            stop=stop,
        )
        for ids in prompt_ids
        for _ in range(n)
    ]
    handles = _submit_all(model, requests)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def prefix(index: int) -> str:
        text = prompt_texts[index // n]
        return text if echo and text is not None else ""

    if body.get("stream"):
        include_usage = bool((params.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            done: list[Completed] = []
            if echo:
                for index in range(len(handles)):
                    yield _sse(
                        _completion_chunk(completion_id, created, model.name, index, prefix(index), None)
                    )
            async for index, item in _merged(handles):
                if isinstance(item, str):
                    yield _sse(_completion_chunk(completion_id, created, model.name, index, item, None))
                else:
                    done.append(item)
                    yield _sse(
                        _completion_chunk(completion_id, created, model.name, index, "", item.finish_reason)
                    )
            if include_usage:
                usage = Completion.model_construct(
                    id=completion_id, choices=[], created=created, model=model.name,
                    object="text_completion", usage=_usage(done, prompt_tokens),
                )  # fmt: skip
                yield _sse(usage)

        return _stream(events(), handles)

    results = await _results(handles)
    choices = [
        CompletionChoice(index=i, text=prefix(i) + r.text, finish_reason=r.finish_reason, logprobs=None)
        for i, r in enumerate(results)
    ]
    completion = Completion(
        id=completion_id,
        choices=choices,
        created=created,
        model=model.name,
        object="text_completion",
        usage=_usage(results, prompt_tokens),
    )
    return JSONResponse(completion.model_dump(mode="json"))


def _completion_chunk(
    completion_id: str, created: int, name: str, index: int, text: str, finish_reason: str | None
) -> Completion:
    # OpenAI streams completion chunks as Completion objects whose finish_reason is null until the
    # end; the openai type declares it non-null, so chunks are built without validation.
    choice = CompletionChoice.model_construct(
        index=index, text=text, finish_reason=finish_reason, logprobs=None
    )
    return Completion.model_construct(
        id=completion_id, choices=[choice], created=created, model=name, object="text_completion", usage=None
    )


def _chat_messages(params: dict[str, Any]) -> list[dict[str, str]]:
    """The request's messages as ``{"role", "content"}`` with text content, for ``render_chat``."""
    messages: list[dict[str, str]] = []
    try:
        for index, message in enumerate(params["messages"]):
            role = message["role"]
            if role in ("tool", "function"):
                raise bad_request(
                    f"{role} messages are not supported by this server",
                    param=f"messages.{index}.role",
                    code="unsupported",
                )
            content = message.get("content")
            if content is None:
                text = ""
            elif isinstance(content, str):
                text = content
            else:
                try:
                    parts = list(content)
                except ValidationError as err:
                    raise _from_validation(err, f"messages.{index}.content") from None
                if any(part.get("type") != "text" for part in parts):
                    raise bad_request(
                        "only text content parts are supported",
                        param=f"messages.{index}.content",
                        code="unsupported",
                    )
                text = "".join(part["text"] for part in parts)
            messages.append({"role": "system" if role == "developer" else role, "content": text})
    except ValidationError as err:
        raise _from_validation(err, "messages") from None
    if not messages:
        raise bad_request("`messages` is empty", param="messages")
    return messages


async def _chat_completions(model: RepotuneModel, request: Request) -> Response:
    from repotune.data.transforms import render_chat

    body = await _json_body(request)
    params = _validated(CHAT_PARAMS, body)
    _check_common(model, body, UNSUPPORTED_CHAT)
    if not isinstance(body.get("messages"), list):  # a string would pass as an iterable of messages
        raise bad_request("`messages` must be a list of messages", param="messages")
    if params.get("logprobs") or params.get("top_logprobs"):
        raise bad_request("`logprobs` is not supported by this server", param="logprobs", code="unsupported")
    response_format = params.get("response_format") or {"type": "text"}
    if response_format.get("type") != "text":
        raise bad_request("only text responses are supported", param="response_format", code="unsupported")
    messages = _chat_messages(params)
    try:
        text = render_chat(messages, model.tokenizer, add_generation_prompt=True)
    except Exception as err:  # a chat template may reject a conversation (roles out of order...)
        raise bad_request(
            f"the model's chat template refused these messages: {err}", param="messages"
        ) from None
    prompt_ids = encode_prompt(model.tokenizer, text)
    n = _choices(model, params, 1)
    limit_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    request_ = model.request(
        prompt_ids,
        max_tokens=body.get(limit_param),
        default_max_tokens=None,
        sampling=_sampling(params),
        stop=_stop(params),
        param=limit_param,
    )
    handles = _submit_all(model, [request_] * n)
    chat_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    if body.get("stream"):
        include_usage = bool((params.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
            return _sse(
                ChatCompletionChunk(
                    id=chat_id,
                    choices=choices,
                    created=created,
                    model=model.name,
                    object="chat.completion.chunk",
                    usage=usage,
                )
            )

        async def events() -> AsyncIterator[str]:
            done: list[Completed] = []
            for index in range(n):
                yield chunk([ChunkChoice(index=index, delta=ChoiceDelta(role="assistant", content=""))])
            async for index, item in _merged(handles):
                if isinstance(item, str):
                    yield chunk([ChunkChoice(index=index, delta=ChoiceDelta(content=item))])
                else:
                    done.append(item)
                    yield chunk(
                        [ChunkChoice(index=index, delta=ChoiceDelta(), finish_reason=item.finish_reason)]
                    )
            if include_usage:
                yield chunk([], _usage(done, len(prompt_ids)))

        return _stream(events(), handles)

    results = await _results(handles)
    completion = ChatCompletion(
        id=chat_id,
        choices=[
            ChatChoice(
                index=i,
                message=ChatCompletionMessage(role="assistant", content=r.text),
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        created=created,
        model=model.name,
        object="chat.completion",
        usage=_usage(results, len(prompt_ids)),
    )
    return JSONResponse(completion.model_dump(mode="json"))
