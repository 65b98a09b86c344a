"""The KServe predictor: one ``kserve.Model`` that owns generation for every protocol.

As in KServe's ``huggingfaceserver`` (``generative_model.py``), the model implements the OpenAI
methods, ``create_completion`` and ``create_chat_completion`` (a typed request in; a typed response, or
an async iterator of typed chunks for ``stream: true``, out), beside KServe's v1/v2 ``predict``; the
routes (``repotune.serving.openai_routes``) only parse, call and serialize.

Every request goes the same way: its options are validated (``repotune.serving.protocol``, one set of
bounds for all routes), its rows are checked against the context and the server's caps, and all its
rows are admitted to the queue at once or none (429), so a refused request leaves nothing queued. A
streaming request is admitted before its iterator is returned: a refusal is an HTTP error, never an
event on a 200.

Prompts are built with ``repotune.data.transforms`` (``fim_prompt``, ``render_chat``) and tokenized
the way training tokenized its examples (``encode_prompt``), so serving cannot drift from training.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NamedTuple

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion import ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob
from openai.types.completion_choice import Logprobs
from openai.types.completion_usage import PromptTokensDetails

from repotune.data.transforms import encode_prompt
from repotune.decoding import stop_token_ids
from repotune.errors import RepotuneError
from repotune.serving._kserve import InferOutput, InferRequest, InferResponse, kserve
from repotune.serving.batching import (
    Batcher,
    Completed,
    GenerationRequest,
    Handle,
    Piece,
    SamplingParams,
    TokenLogprob,
    bytes_named,
    merged,
    results,
)
from repotune.serving.errors import ServingError, Unavailable, bad_request
from repotune.serving.loading import (
    FALLBACK_NAME,
    LoadedModel,
    context_length,
    load_model,
    served_names,
)
from repotune.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Instance,
    parse_json,
    validated,
)
from repotune.serving.retrieval import NOTHING, Retrieved, ServedRetrieval
from repotune.serving.settings import ServeSettings
from repotune.wording import counted

__all__ = ["REQUEST_ID", "RepotuneModel", "ServeSettings", "encode_prompt"]

# One line an OpenAI request, under KServe's request-trace logger (its handler and format, beside
# uvicorn's access line): which answer it was, its token counts, how it finished and how long it took;
# or, for a request refused, why (``refusal_line``).
request_log = logging.getLogger("kserve.trace.requests")

REQUEST_ID: ContextVar[str | None] = ContextVar("REQUEST_ID", default=None)
"""The request's ``X-Request-Id`` (set by Istio/KServe's ingress, or the client), for the request's line."""


class TextPrompt(NamedTuple):
    """A text prompt as the model gets it."""

    ids: list[int]
    retrieved: Retrieved
    """The context put in front of the prompt (``NOTHING`` when none)."""
    heal: str = ""
    """The prompt's trailing whitespace, held back from ``ids`` for the model to write."""
    line: bool = False
    """A gap answered from the code before the cursor alone (``ServeSettings.fim`` off): the
    completion ends with the line."""
    before: str = ""
    """The code before the cursor (the prompt as the client sent it, or its FIM prefix)."""


def line_stops(stops: tuple[str, ...], prompt: TextPrompt) -> tuple[str, ...]:
    """A request's stop strings, and the end of the line for a gap answered from its prefix alone."""
    return (*stops, "\n") if prompt.line and "\n" not in stops else stops


class RepotuneModel(kserve.Model):
    """A causal LM behind a ``Batcher``, served by ``kserve.ModelServer``.

    KServe's v1 ``:predict`` takes ``{"instances": [PROMPT, ...]}`` where a prompt is a string or an
    object with ``prompt`` and optional ``suffix`` (fill in the middle), ``file_path``, ``retrieval``,
    ``max_tokens``, ``temperature``, ``top_p``, ``seed`` and ``stop``; it answers
    ``{"predictions": [TEXT, ...]}``. The
    v2 ``infer`` takes a BYTES input tensor of prompts (any name) with the same options as request
    parameters, and answers a BYTES output tensor ``text``. Both are greedy unless asked otherwise.

    ``name=None`` names the model when it loads (``served_names``: the registered model, the
    repository, the folder); the other names found are ``aliases`` the OpenAI routes accept too.
    """

    def __init__(
        self,
        name: str | None,
        source: str | Path,
        *,
        adapter: str | Path | None = None,
        settings: ServeSettings | None = None,
    ) -> None:
        super().__init__(name or FALLBACK_NAME)
        self.explicit_name = name
        self.aliases: tuple[str, ...] = ()
        self.source = source
        self.adapter = adapter
        self.settings = settings or ServeSettings()
        self.loaded: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.fim = False
        self.fim_prompts = False
        self.context = 0
        self.retrieval: ServedRetrieval | None = None

    def load(self) -> bool:
        from repotune.data.transforms import has_fim_tokens

        self.loaded = load_model(self.source, adapter=self.adapter, device=self.settings.device)
        names = served_names(self.loaded.folder, self.source, self.explicit_name)
        self.name, self.aliases = names[0], tuple(names[1:])
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        self.fim = has_fim_tokens(tokenizer)
        if self.settings.fim and not self.fim:
            raise RepotuneError(
                f"--fim on: {self.source} has no fill-in-the-middle tokens (StarCoder's <fim_prefix>, "
                "<fim_suffix>, <fim_middle> or Qwen's <|fim_prefix|>, ...); serve it with --fim off or auto "
                "(a suffix is then answered from the code before the cursor alone)"
            )
        self.fim_prompts = self.fim if self.settings.fim is None else self.settings.fim
        """Whether a gap (a request with a suffix) becomes a FIM prompt, or is answered from its prefix."""
        self.context = context_length(model, tokenizer)
        self.retrieval = ServedRetrieval.load(self.loaded.folder, self.settings.retrieval)
        self.batcher = Batcher(
            model,
            tokenizer,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            batch_wait_ms=self.settings.batch_wait_ms,
            turn_tokens=self.settings.turn_tokens,
            prefix_cache_tokens=self.settings.prefix_cache_tokens,
            eos_ids=stop_token_ids(model, tokenizer),
            model_name=self.name,
        )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.stop()
        if self.loaded is not None:
            import shutil

            for path in self.loaded.scratch:
                shutil.rmtree(path, ignore_errors=True)

    @property
    def tokenizer(self) -> Any:
        if self.loaded is None:
            raise Unavailable("the model is not loaded yet")
        return self.loaded.tokenizer

    def build_prompt(
        self, prompt: str, suffix: str | None = None, file_path: str | None = None, context: str = ""
    ) -> str:
        """The text to complete: ``prompt`` as it is, or with ``suffix`` a fill-in-the-middle prompt
        built by the training transform (``fim_prompt``; ``text_prompt`` passes a suffix only where
        the model is served with FIM prompts, which ``load`` allows only with FIM tokens).

        With a ``file_path`` or retrieved ``context``, a plain prompt is framed as training frames code
        and the evaluate stage scores it: ``code_prompt`` (the context, the file header of
        ``file_path``, then the prompt); a FIM prompt always is (``fim_prompt(context=...)``).
        """
        from repotune.data.transforms import code_prompt, fim_prompt

        if suffix is None:
            return (
                code_prompt(prompt, path=file_path, tokenizer=self.tokenizer, context=context)
                if context or file_path
                else prompt
            )
        return fim_prompt(prompt, suffix, path=file_path, tokenizer=self.tokenizer, context=context)

    def uses_retrieval(self, asked: bool | None) -> bool:
        """Whether a request gets retrieved context: what it ``asked`` (its ``retrieval`` field), else the
        server's default; 400 when it asks for context from a model that carries no index."""
        if asked and self.retrieval is None:
            raise bad_request(
                f"model {self.name} has no retrieval index; send the request without `retrieval`",
                param="retrieval",
                code="retrieval_not_available",
            )
        return self.retrieval is not None and (self.retrieval.default if asked is None else asked)

    def text_prompt(
        self,
        prompt: str,
        suffix: str | None,
        file_path: str | None,
        *,
        retrieval: bool,
        max_tokens: int | None,
        default_max_tokens: int | None,
    ) -> TextPrompt:
        """Token ids of a text prompt (``build_prompt``), the context retrieved for it, and the trailing
        whitespace held back from the ids for the model to write (``repotune.serving.healing``).

        The context gets what the window has left after the prompt and the completion (``max_tokens``,
        else the default the request will get): a prompt that fits without context still fits with it.
        """
        from repotune.data.transforms import split_fim_prompt

        if suffix is None and (written := split_fim_prompt(prompt)) is not None:
            # An editor's own FIM template (in this model's FIM tokens or another family's): filled as
            # this model fills a gap, with its own tokens or from the prefix alone.
            prompt, suffix = written
        line = suffix is not None and not self.fim_prompts
        fim = suffix if self.fim_prompts else None  # the suffix still steers retrieval when not shown
        ids, heal = self._encode_text(self.build_prompt(prompt, fim, file_path), healed=fim is None)
        if not retrieval or self.retrieval is None:
            return TextPrompt(ids, NOTHING, heal, line, prompt)
        wanted = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else min(
            default_max_tokens or self.settings.max_tokens, self.settings.max_tokens)  # fmt: skip
        ids, heal, found = self.retrieval.framed(
            prompt,
            suffix,
            file_path,
            self.tokenizer,
            (ids, heal),
            wanted=wanted,
            window=self.context,
            frame=lambda context: self._encode_text(
                self.build_prompt(prompt, fim, file_path, context), healed=fim is None
            ),
        )
        return TextPrompt(ids, found, heal, line, prompt)

    def _encode_text(self, text: str, *, healed: bool) -> tuple[list[int], str]:
        """``encode_prompt`` of ``text``; a plain prompt (``healed``) has its trailing whitespace held
        back where the tokenizer allows it, as much of it as the vocabulary can write again
        (``TokenTexts.writable``; a FIM prompt ends in ``<fim_middle>``, not in whitespace)."""
        from repotune.serving.healing import encode_held_back

        texts = self.batcher.token_texts if healed and self.batcher is not None else None
        return encode_held_back(text, self.tokenizer, texts)

    def request(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int | None,
        default_max_tokens: int | None = None,
        sampling: SamplingParams | None = None,
        stop: tuple[str, ...] = (),
        param: str = "max_tokens",
        prompt_param: str = "prompt",
        heal: str = "",
        before: str = "",
        min_confidence: float = 0.0,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
    ) -> GenerationRequest:
        """A checked ``GenerationRequest``: the prompt fits the context and ``max_tokens`` is within
        (0, server cap] and fits after the prompt. ``max_tokens=None`` takes ``default_max_tokens``
        (``None``: as many as the cap and the context allow). ``before``: the code before the cursor of
        a completion, whose last line a greedy answer's first line must not write again
        (``ServeSettings.retry_line_above``). ``min_confidence``: a greedy completion ends before its
        first line less sure than this (``GenerationRequest.min_confidence``); sampled ones are not cut.
        ``logprobs``, ``prompt_logprobs``: what to record of each token (``GenerationRequest``)."""
        cap = self.settings.max_tokens
        room = self.context - len(prompt_ids)
        if not prompt_ids:
            raise bad_request("the prompt is empty", param=prompt_param)
        if room <= 0:
            raise bad_request(
                f"this model's maximum context length is {self.context} tokens, and the prompt has "
                f"{len(prompt_ids)} tokens; shorten the prompt",
                param=prompt_param,
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
        sampling = sampling or SamplingParams()
        judged = before if sampling.greedy and self.settings.retry_line_above else ""
        return GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=max_tokens,
            sampling=sampling,
            stop=stop,
            timeout_s=self.settings.request_timeout_s,
            heal=heal,
            line_above=judged,
            min_confidence=min_confidence if sampling.greedy else 0.0,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs and logprobs is not None,
        )

    def submit(self, request: GenerationRequest) -> Handle:
        return self.submit_all([request])[0]

    def submit_all(self, requests: list[GenerationRequest], param: str | None = None) -> list[Handle]:
        """Admit all of one client request's rows to the queue, or none: 400 over the per-request cap
        (``max_generations``), 429 when the queue cannot take them all now."""
        if self.batcher is None or not self.ready:
            raise Unavailable("the model is not loaded yet")
        self.check_generations(len(requests), param)
        return self.batcher.submit_all(requests)

    def check_generations(self, count: int, param: str | None) -> None:
        """400 when one request asks for more generations than its fair share of the queue."""
        cap = self.settings.max_generations
        if count > cap:
            raise bad_request(
                f"this request asks for {count} generations; this server takes at most {cap} per request "
                "(split it into smaller requests)",
                param=param,
                code="too_many_generations",
            )

    def _echoed(self, item: str | list[int]) -> str:
        """The prompt as ``echo`` puts it in front of the completion: the text, or the ids decoded."""
        return item if isinstance(item, str) else self.tokenizer.decode(item, skip_special_tokens=False)

    def check_model(self, name: str) -> None:
        """404 in OpenAI's shape unless ``name`` is the model's name or one of its aliases."""
        if name != self.name and name not in self.aliases:
            raise ServingError(
                404,
                f"the model {name!r} does not exist; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )

    def _prompt_ids(self, item: str | list[int], request: CompletionRequest, retrieval: bool) -> TextPrompt:
        if isinstance(item, str) and request.scores_prompt:
            # Scored as given (``CompletionRequest.scores_prompt``): the log probabilities are of the
            # echoed text's own tokens, nothing put in front of them nor held back.
            return TextPrompt(encode_prompt(self.tokenizer, item), NOTHING, before=item)
        if isinstance(item, str):
            return self.text_prompt(
                item, request.suffix, request.file_path, retrieval=retrieval, max_tokens=request.max_tokens,
                default_max_tokens=self.settings.default_max_tokens,
            )  # fmt: skip
        if request.suffix is not None:
            raise bad_request("`suffix` needs the prompt as text, not token ids", param="suffix")
        vocab = len(self.tokenizer)
        if not all(0 <= t < vocab for t in item):
            raise bad_request(f"token ids in `prompt` must be integers from 0 to {vocab - 1}", param="prompt")
        return TextPrompt(list(item), NOTHING)  # no text to search with, nor to hold back

    async def create_completion(self, request: CompletionRequest) -> Completion | AsyncIterator[Completion]:
        """``/openai/v1/completions``: a ``Completion``, or its chunks for ``stream: true``."""
        started = time.monotonic()
        self.check_model(request.model)
        request.refuse_unsupported()
        items = request.prompts()
        n = request.n or 1
        self.check_generations(len(items) * n, "n" if n > 1 else "prompt")
        retrieval = self.uses_retrieval(request.retrieval) and not request.scores_prompt
        built = [self._prompt_ids(item, request, retrieval) for item in items]
        # OpenAI's default temperature; the line repeat penalty the evaluate stage scored with
        sampling = request.sampling(default_temperature=1.0, line_penalty=self.settings.line_repeat_penalty)
        stop = request.stops()
        gate = self.settings.min_confidence if request.min_confidence is None else request.min_confidence
        rows = [
            self.request(prompt.ids, max_tokens=request.max_tokens, heal=prompt.heal,
                         default_max_tokens=self.settings.default_max_tokens, sampling=sampling,
                         stop=line_stops(stop, prompt), before=prompt.before, min_confidence=gate,
                         logprobs=request.logprobs, prompt_logprobs=request.scores_prompt)
            for prompt in built
            for _ in range(n)
        ]  # fmt: skip
        handles = self.submit_all(rows, param="n" if n > 1 else "prompt")
        prompt_tokens = sum(len(prompt.ids) for prompt in built)
        echoed = [self._echoed(item) if request.echo else "" for item in items for _ in range(n)]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.name}
        served = Served(head["id"], prompt_tokens, started, sum(len(p.retrieved.sources) for p in built))
        if request.stream:
            return self._completion_chunks(head, handles, echoed, served, request.include_usage, n)
        with served:
            done = served.done = await results(handles)
        choices = [
            CompletionChoice(
                index=i,
                text=echoed[i] + r.text,
                finish_reason=r.finish_reason,
                logprobs=openai_logprobs(r, echoed[i]),
            )
            for i, r in enumerate(done)
        ]
        extra = {"retrieval": [list(prompt.retrieved.sources) for prompt in built]} if retrieval else {}
        return Completion(
            **head, choices=choices, object="text_completion", usage=usage(done, prompt_tokens, n), **extra
        )

    async def _completion_chunks(
        self, head: dict[str, Any], handles: list[Handle], echoed: list[str], served: Served,
        include_usage: bool, n: int,
    ) -> AsyncIterator[Completion]:  # fmt: skip
        written = [0] * len(handles)  # characters of each choice's tokens streamed: their text_offset

        def chunk(
            index: int, text: str, finish_reason: str | None, tokens: Sequence[TokenLogprob] | None = None
        ) -> Completion:
            logprobs = None
            if tokens is not None:
                logprobs = completion_logprobs(tokens, offsets(tokens, written[index]))
                written[index] += sum(len(token.text) for token in tokens)
            # OpenAI streams completion chunks as Completion objects whose finish_reason is null until
            # the end; the openai type declares it non-null, so chunks are built without validation.
            choice = CompletionChoice.model_construct(
                index=index, text=text, finish_reason=finish_reason, logprobs=logprobs
            )
            return Completion.model_construct(**head, choices=[choice], object="text_completion", usage=None)

        done = served.done
        finished: dict[int, Completed] = {}  # by choice: ``usage`` takes them prompt by prompt
        with served:
            for index, text in enumerate(echoed):
                if text:
                    yield chunk(index, text, None)
            async for index, item in merged(handles):
                if isinstance(item, str):
                    yield chunk(index, item, None)
                elif isinstance(item, Piece):
                    yield chunk(index, item.text, None, item.logprobs)
                else:
                    done.append(item)
                    finished[index] = item
                    # the end of sequence that ended the completion, as a whole completion ends with it
                    yield chunk(
                        index, "", item.finish_reason, None if item.logprobs is None else ending(item)
                    )
        if include_usage:
            totals = usage([finished[i] for i in sorted(finished)], served.prompt_tokens, n)
            yield Completion.model_construct(**head, choices=[], object="text_completion", usage=totals)

    async def create_chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        """``/openai/v1/chat/completions``: a ``ChatCompletion``, or its chunks for ``stream: true``."""
        from repotune.data.transforms import render_chat

        started = time.monotonic()
        self.check_model(request.model)
        request.refuse_unsupported()
        messages = request.text_messages()
        try:
            text = render_chat(messages, self.tokenizer, add_generation_prompt=True)
        except Exception as err:  # a chat template may reject a conversation (roles out of order...)
            raise bad_request(
                f"the model's chat template refused these messages: {err}", param="messages"
            ) from None
        prompt_ids = encode_prompt(self.tokenizer, text)
        n = request.n or 1
        self.check_generations(n, "n")
        row = self.request(
            prompt_ids, max_tokens=request.limit, default_max_tokens=None,
            sampling=request.sampling(default_temperature=1.0), stop=request.stops(),
            param=request.limit_param, prompt_param="messages",
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )  # fmt: skip
        handles = self.submit_all([row] * n, param="n")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.name}
        served = Served(head["id"], len(prompt_ids), started)
        if request.stream:
            return self._chat_chunks(head, handles, served, request.include_usage)
        with served:
            done = served.done = await results(handles)
        choices = [
            ChatChoice(
                index=i,
                message=ChatCompletionMessage(role="assistant", content=r.text),
                finish_reason=r.finish_reason,
                logprobs=chat_logprobs(r),
            )
            for i, r in enumerate(done)
        ]
        return ChatCompletion(
            **head, choices=choices, object="chat.completion", usage=usage(done, len(prompt_ids), len(done))
        )

    async def _chat_chunks(
        self, head: dict[str, Any], handles: list[Handle], served: Served, include_usage: bool
    ) -> AsyncIterator[ChatCompletionChunk]:
        def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(**head, choices=choices, object="chat.completion.chunk", usage=usage)

        done = served.done
        with served:
            for index in range(len(handles)):
                yield chunk([ChunkChoice(index=index, delta=ChoiceDelta(role="assistant", content=""))])
            async for index, item in merged(handles):
                if isinstance(item, str):
                    yield chunk([ChunkChoice(index=index, delta=ChoiceDelta(content=item))])
                elif isinstance(item, Piece):
                    logprobs = ChunkLogprobs(content=chat_tokens(item.logprobs))
                    delta = ChoiceDelta(content=item.text)
                    yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
                else:
                    done.append(item)
                    finish = item.finish_reason
                    yield chunk([ChunkChoice(index=index, delta=ChoiceDelta(), finish_reason=finish)])
        if include_usage:
            yield chunk([], usage(done, served.prompt_tokens, len(done)))

    def _instance_row(self, instance: Instance) -> GenerationRequest:
        prompt = self.text_prompt(
            instance.prompt, instance.suffix, instance.file_path,
            retrieval=self.uses_retrieval(instance.retrieval), max_tokens=instance.max_tokens,
            default_max_tokens=self.settings.default_max_tokens,
        )  # fmt: skip
        return self.request(
            prompt.ids,
            heal=prompt.heal,
            max_tokens=instance.max_tokens,
            default_max_tokens=self.settings.default_max_tokens,
            sampling=instance.sampling(
                default_temperature=0.0, line_penalty=self.settings.line_repeat_penalty
            ),
            stop=line_stops(instance.stops(), prompt),
            before=prompt.before,
            min_confidence=self.settings.min_confidence
            if instance.min_confidence is None
            else instance.min_confidence,
        )

    async def complete(self, options: dict[str, Any]) -> Completed:
        """One completion for a KServe v1 instance object (``prompt`` plus optional settings)."""
        row = self._instance_row(validated(Instance, options, "instance"))
        return (await results(self.submit_all([row])))[0]

    async def predict(
        self, payload: dict[str, Any] | bytes | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        """KServe v1 (a dict with ``instances``) or v2 (an ``InferRequest``); greedy unless asked.

        Refusals are ``ServingError``: the server answers them with their status (400, 429, 503, 504)
        and KServe's error body, ``{"error": message}``.
        """
        if isinstance(payload, InferRequest):
            parameters = dict(payload.parameters or {})
            prompts = _v2_prompts(payload)
            self.check_generations(len(prompts), "inputs")
            instances = [validated(Instance, {**parameters, "prompt": p}, "parameters") for p in prompts]
            done = await results(self.submit_all([self._instance_row(i) for i in instances], "inputs"))
            output = InferOutput(
                name="text", shape=[len(done)], datatype="BYTES", data=[r.text for r in done]
            )
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=[output]
            )
        if isinstance(payload, bytes | str):
            # KServe parses only bodies sent as application/json (exactly); curl's default form type, or
            # "application/json; charset=utf-8", reaches here as the raw body.
            payload = parse_json(payload)
        raw = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(raw, list) or not raw:
            raise bad_request(
                'expected {"instances": [PROMPT, ...]} with at least one prompt', param="instances"
            )
        self.check_generations(len(raw), "instances")
        instances = [
            validated(Instance, {"prompt": item} if isinstance(item, str) else item, f"instances.{i}")
            for i, item in enumerate(raw)
        ]
        done = await results(self.submit_all([self._instance_row(i) for i in instances], "instances"))
        return {"predictions": [r.text for r in done]}

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        raise ServingError(404, f"model {self.name} has no explainer", code="not_found")


class Served:
    """Writes a request's line to ``request_log`` when the block that answers it ends: the answer's id,
    its token counts, each choice's finish reason (or why it was cut short: an error, or a streaming
    client that went away), the retrieved chunks put in front of its prompts, and its time since the
    request was parsed, with the ``X-Request-Id`` it came with."""

    def __init__(self, answer_id: str, prompt_tokens: int, started: float, retrieved: int = 0) -> None:
        self.answer_id, self.prompt_tokens, self.started, self.retrieved = (
            answer_id, prompt_tokens, started, retrieved
        )  # fmt: skip
        self.done: list[Completed] = []
        self.request_id = REQUEST_ID.get()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: Any) -> None:
        request_log.info(self.line(err, time.monotonic() - self.started))
        if isinstance(err, ServingError):
            err.logged = True

    def line(self, err: BaseException | None, seconds: float) -> str:
        if err is None:
            finishes = Counter(r.finish_reason for r in self.done)
            choices = f"{len(self.done)} choices: " if len(self.done) > 1 else ""
            how = ", ".join(f"{n} {reason}" if choices else reason for reason, n in finishes.most_common())
            completion = sum(r.completion_tokens for r in self.done)
            head = f"{self.prompt_tokens} prompt + {completion} completion tokens ({choices}{how}) in"
        else:
            if isinstance(err, ServingError):
                why = f"{err.status} {err.message}"
            elif isinstance(err, GeneratorExit | asyncio.CancelledError):
                why = "the client went away"
            else:
                why = type(err).__name__
            head = f"{self.prompt_tokens} prompt tokens, cut short ({why}) after"
        parts = [f"{self.answer_id}: {head} {seconds:.2f} s"]
        if self.retrieved:
            parts.append(counted(self.retrieved, "retrieved chunk"))
        if self.request_id:
            parts.append(f"x-request-id {self.request_id}")
        return ", ".join(parts)


def refusal_line(path: str, err: ServingError, request_id: str | None) -> str:
    """The request log's line for a request refused before anything was generated (a 400, 404, 405,
    429...): the path, the status and the reason the client got, and the ``X-Request-Id``."""
    line = " ".join(f"{path}: refused ({err.status} {err.message})".split())  # one line, whatever was sent
    return f"{line}, x-request-id {request_id}" if request_id else line


def openai_logprobs(done: Completed, echoed: str) -> Logprobs | None:
    """OpenAI's ``logprobs`` of a completion choice: its tokens (the prompt's first where it is echoed
    and was scored), their log probabilities, the most likely tokens of each step, and where each
    token starts in the choice's text. None when the request asked for none.

    A text prompt's tokens may start with one that the text does not spell (the BOS of a tokenizer
    that adds it): it starts at 0 and writes nothing of the echoed text, so the tokens after it start
    where their text does."""
    if done.logprobs is None:
        return None
    prompt = done.prompt_logprobs or ()
    spelled = "".join(token.text for token in prompt)
    lead = len(spelled) - len(echoed) if prompt and spelled.endswith(echoed) else 0
    generated = [*done.logprobs, *ending(done)]
    # the completion starts where the echoed prompt ends
    at = [max(0, offset - lead) for offset in offsets(prompt, 0)] + offsets(generated, len(echoed))
    return completion_logprobs([*prompt, *generated], at)


def ending(done: Completed) -> list[TokenLogprob]:
    """The token a completion's log probabilities end with: the end of sequence that ended it, if one
    did (none where a stop string, a gate or the token limit did)."""
    return [done.ended_by] if done.ended_by is not None else []


def offsets(tokens: Sequence[TokenLogprob], at: int) -> list[int]:
    """Where each of ``tokens`` starts in the text, the first at ``at``."""
    found = []
    for token in tokens:
        found.append(at)
        at += len(token.text)
    return found


def completion_logprobs(tokens: Sequence[TokenLogprob], text_offset: list[int]) -> Logprobs:
    """OpenAI's completion ``logprobs`` object of ``tokens``."""
    # OpenAI gives the echoed prompt's first token null log probabilities, which the openai type does
    # not declare: built without validation.
    return Logprobs.model_construct(
        tokens=[token.text for token in tokens],
        token_logprobs=[token.logprob for token in tokens],
        top_logprobs=[None if token.top is None else dict(token.top) for token in tokens],
        text_offset=text_offset,
    )


def chat_logprobs(done: Completed) -> ChoiceLogprobs | None:
    """OpenAI's chat ``logprobs`` of an answer: the tokens that write it (without the end of sequence
    that ended it), with their UTF-8 bytes, log probabilities and the ``top_logprobs`` likeliest tokens
    of each step."""
    if done.logprobs is None:
        return None
    return ChoiceLogprobs(content=chat_tokens(done.logprobs))


def chat_tokens(tokens: Sequence[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    """``tokens`` in OpenAI's chat shape: with their UTF-8 bytes and their likeliest alternatives'."""
    return [
        ChatCompletionTokenLogprob(
            token=token.text,
            bytes=list(token.text.encode()),
            logprob=token.logprob if token.logprob is not None else 0.0,
            top_logprobs=[
                TopLogprob(token=name, bytes=list(bytes_named(name)), logprob=logprob)
                for name, logprob in token.top or ()
            ],
        )
        for token in tokens
    ]


def usage(done: list[Completed], prompt_tokens: int, n: int = 1) -> CompletionUsage:
    """Token counts; prompts count once each (as OpenAI counts them), however many choices they have
    (``done`` holds ``n`` choices a prompt, prompt by prompt). ``prompt_tokens_details.cached_tokens``:
    what the prefix cache held of the prompts, as OpenAI reports its prompt caching (a prompt's best
    choice: one of its rows may have found it kept, another not)."""
    completion = sum(r.completion_tokens for r in done)
    step = max(1, n)
    cached = sum(max(r.cached_tokens for r in done[at : at + step]) for at in range(0, len(done), step))
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _v2_prompts(request: InferRequest) -> list[str]:
    if not request.inputs:
        raise bad_request("the request has no inputs; send a BYTES tensor of prompts", param="inputs")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise bad_request(
            f"input {tensor.name} is {tensor.datatype}; send the prompts as a BYTES tensor", param="inputs"
        )
    data = tensor.data if isinstance(tensor.data, list) else tensor.as_numpy().ravel().tolist()
    prompts = [p.decode("utf-8", errors="replace") if isinstance(p, bytes) else p for p in data]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad_request("the BYTES input must hold one or more prompt strings", param="inputs")
    return prompts
