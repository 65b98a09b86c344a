"""Serving, in-process: one validation for every route, admission all-or-nothing, the guards in front of
the routes, the served name, the port and the exposure checks. The model is the tiny random one."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.serving_helpers import make_serving_model

from repotune.errors import RepotuneError
from repotune.http_limits import json_depth_exceeds
from repotune.serving.batching import Batcher, GenerationRequest
from repotune.serving.errors import QueueFull, ServingError
from repotune.serving.guards import BearerAuth, BodyGuard
from repotune.serving.loading import served_names
from repotune.serving.model import RepotuneModel, encode_prompt
from repotune.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Instance,
    validated,
)
from repotune.serving.server import bind
from repotune.serving.settings import ServeSettings

# The stop list Continue's autocomplete sends for a Python file with its default (StarCoder-style)
# template: the template's stops, then multiline and common stops, then the language's
# (core/autocomplete/templating/AutocompleteTemplate.ts, getStopTokens.ts, core/autocomplete/languages.ts).
CONTINUE_STOPS = [
    "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>", "</fim_middle>",
    "</code>", "\n\n", "\r\n\r\n", "/src/", "#- coding: utf-8", "```", "def", "class",
]  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> RepotuneModel:
    folder = make_serving_model(tmp_path_factory.mktemp("protocol") / "tiny")
    served = RepotuneModel("tiny", folder, settings=ServeSettings(max_tokens=16, max_generations=8))
    served.load()
    yield served
    served.stop()


def _refusal(call) -> ServingError:
    with pytest.raises(ServingError) as raised:
        call()
    return raised.value


# Values the OpenAI routes always refused and KServe's v1 route took (or failed on with a 500).
BAD_OPTIONS = [
    ({"temperature": 50}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"seed": 2**64}, "seed"),  # torch.manual_seed: "Overflow when unpacking long long"
    ({"stop": 5}, "stop"),
    ({"stop": ["x"] * 65}, "stop"),
    ({"stop": ["x" * 5000]}, "stop"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
]


@pytest.mark.parametrize(("options", "param"), BAD_OPTIONS)
def test_one_validation_for_every_route(model: RepotuneModel, options: dict, param: str) -> None:
    completion = {"model": "tiny", "prompt": "x", **options}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], **options}
    assert _refusal(lambda: validated(CompletionRequest, completion)).param == param
    assert _refusal(lambda: validated(ChatCompletionRequest, chat)).param == param
    assert _refusal(lambda: validated(Instance, {"prompt": "x", **options})).param == param
    # KServe v1 through the model itself: a 400 naming the instance's field, nothing generated.
    v1 = _refusal(lambda: asyncio.run(model.predict({"instances": [{"prompt": "x", **options}]})))
    assert v1.status == 400 and v1.param == f"instances.0.{param}"


def test_real_clients_stop_lists_are_accepted(model: RepotuneModel) -> None:
    request = validated(CompletionRequest, {"model": "tiny", "prompt": "x", "stop": CONTINUE_STOPS})
    assert request.stops() == tuple(CONTINUE_STOPS)
    assert validated(Instance, {"prompt": "x", "stop": ["", "a"]}).stops() == ("a",)  # empty ones drop

    async def run() -> None:
        # v1 takes the same list, and a stop string cuts the text there.
        full = (await model.predict({"instances": [{"prompt": "def add(a, b):", "max_tokens": 12}]}))[
            "predictions"
        ]
        assert full[0]
        stop = full[0][1:3] or full[0][:1]
        cut = await model.predict({"instances": [{"prompt": "def add(a, b):", "max_tokens": 12,
                                                  "stop": [*CONTINUE_STOPS, stop]}]})  # fmt: skip
        assert stop not in cut["predictions"][0] and full[0].startswith(cut["predictions"][0])

    asyncio.run(run())


def test_a_refused_request_leaves_nothing_queued(model: RepotuneModel) -> None:
    tokenizer = model.tokenizer
    ids = encode_prompt(tokenizer, "x")
    # A batch window far longer than the test keeps submitted rows waiting in the queue.
    batcher = Batcher(model.loaded.model, tokenizer, max_queue=4, batch_wait_ms=60_000, max_batch_size=8)

    async def run() -> None:
        with pytest.raises(QueueFull):
            batcher.submit_all([GenerationRequest(ids, 2) for _ in range(5)])
        assert batcher.queued() == 0
        batcher.submit_all([GenerationRequest(ids, 2) for _ in range(3)])
        with pytest.raises(QueueFull) as full:
            batcher.submit_all([GenerationRequest(ids, 2) for _ in range(2)])
        assert full.value.status == 429 and batcher.queued() == 3

    try:
        asyncio.run(run())
    finally:
        batcher.stop()

    # Over the per-request cap (8 here): a 400 before anything is queued, on every protocol.
    many = {"instances": [{"prompt": "x"}] * 300}
    refused = _refusal(lambda: asyncio.run(model.predict(many)))
    assert refused.status == 400 and refused.code == "too_many_generations" and model.batcher.queued() == 0
    completion = validated(CompletionRequest, {"model": "tiny", "prompt": ["a", "b", "c"], "n": 3})
    assert _refusal(lambda: asyncio.run(model.create_completion(completion))).param == "n"
    assert model.batcher.queued() == 0


def test_streams_are_refused_before_they_start(model: RepotuneModel) -> None:
    # A refusal must be an HTTP status: create_* raises before it returns the stream.
    too_long = validated(
        CompletionRequest, {"model": "tiny", "prompt": "x", "max_tokens": 17, "stream": True}
    )
    assert _refusal(lambda: asyncio.run(model.create_completion(too_long))).param == "max_tokens"
    other = validated(ChatCompletionRequest, {"model": "nope", "messages": [{"role": "user", "content": "x"}],
                                              "stream": True})  # fmt: skip
    assert _refusal(lambda: asyncio.run(model.create_chat_completion(other))).status == 404


def test_json_depth_is_counted_on_the_bytes() -> None:
    assert not json_depth_exceeds(b'{"messages": [{"content": [{"type": "text"}]}]}', 5)
    assert json_depth_exceeds(b'{"messages": [{"content": [{"type": "text"}]}]}', 4)
    assert json_depth_exceeds(b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 32)
    # Brackets and escaped quotes inside strings do not count.
    assert not json_depth_exceeds(json.dumps({"prompt": "[[[[{{{{" * 100 + '\\"[[['}).encode(), 2)
    assert not json_depth_exceeds(b"[]" * 100_000, 1)  # wide is not deep
    assert json_depth_exceeds(b"[" * 40, 32)  # unclosed: counted all the same


def _guarded_app(tokens: tuple[str, ...]) -> httpx.AsyncClient:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"length": len(await request.body())})

    app = Starlette(routes=[Route("/openai/v1/completions", echo, methods=["POST"]),
                            Route("/v2/health/ready", echo), Route("/v1/models/m", echo)])  # fmt: skip
    guarded = BearerAuth(BodyGuard(app, max_bytes=1000, max_depth=8), tokens=tokens)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://test")


def test_guards_refuse_with_openai_bodies() -> None:
    async def run() -> None:
        async with _guarded_app(("s3cret", "other")) as client:
            missing = await client.post("/openai/v1/completions", content=b"{}")
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["code"] == "invalid_api_key"
            wrong = await client.post("/openai/v1/completions", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid bearer token"
            basic = await client.post("/openai/v1/completions", headers={"Authorization": "Basic czNjcmV0"})
            assert basic.status_code == 401
            auth = {"Authorization": "Bearer other"}
            assert (
                await client.post("/openai/v1/completions", headers=auth, content=b"{}")
            ).status_code == 200
            # Probes carry no token.
            assert (await client.get("/v2/health/ready")).status_code == 200
            assert (await client.get("/v1/models/m")).status_code == 200
            deep = await client.post(
                "/openai/v1/completions", headers=auth, content=b'{"p": ' + b"[" * 9 + b"]" * 9 + b"}"
            )
            assert deep.status_code == 400 and deep.json()["error"]["code"] == "json_too_deep"
            big = await client.post("/openai/v1/completions", headers=auth, content=b"x" * 1001)
            assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    asyncio.run(run())


def test_served_name_precedence(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    assert served_names(folder, folder) == ["model"]
    summary = {"data": {"dataset.source": "https://github.com/acme/widgets.git", "train_records": 3}}
    (folder / "train_summary.json").write_text(json.dumps(summary))
    assert served_names(folder, folder) == ["widgets", "model"]
    (folder / "registered_model_meta").write_text("model_name: acme-coder\nmodel_version: '3'\n")
    assert served_names(folder, folder) == ["acme-coder", "widgets", "model"]
    assert served_names(folder, folder, explicit="mine") == ["mine", "acme-coder", "widgets", "model"]
    assert served_names(folder, "s3://bucket/runs/model") == ["acme-coder", "widgets", "model"]
    # An adapter folder inside a training output takes the name from the summary around it.
    adapter = folder / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert served_names(adapter, adapter) == ["widgets", "adapter"]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("github:acme/widgets", "widgets"),
        ("git@github.com:acme/widgets.git", "widgets"),
        ("ssh://git@host:2222/team/widgets.git", "widgets"),
        ("/home/me/src/widgets", "widgets"),
        ("/tmp/uploads/widgets.tar.gz", "widgets"),
        ("file:///srv/git/widgets.git/", "widgets"),
        ("/srv/my repo", None),  # a space cannot sit in a URL path: the next name is used
    ],
)
def test_repository_names(tmp_path: Path, source: str, name: str | None) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "train_summary.json").write_text(json.dumps({"data": {"dataset.source": source}}))
    assert served_names(folder, folder) == ([name, "model"] if name else ["model"])


def test_a_taken_port_and_an_open_address_fail_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RepotuneError, match=rf"^port {port} on 127.0.0.1 is in use$"):
            bind("127.0.0.1", port)
    bind("127.0.0.1", port).close()  # free again
    with pytest.raises(RepotuneError, match="REPOTUNE_SERVE_TOKENS"):
        ServeSettings().check_exposure("0.0.0.0")
    ServeSettings(tokens=("t",)).check_exposure("0.0.0.0")
    ServeSettings(insecure_no_auth=True).check_exposure("::")
    for loopback in ("127.0.0.1", "::1", "localhost"):
        ServeSettings().check_exposure(loopback)
    with pytest.raises(RepotuneError, match="surrounding spaces"):
        ServeSettings(tokens=(" t",))


def test_a_stream_cut_short_ends_in_an_event_the_openai_client_raises_and_tabby_can_parse() -> None:
    """The request's timeout mid-stream: one event with OpenAI's error (the SDK raises it) and a last
    choice that finishes (Tabby parses every event as a chunk, and an error alone fails its parser)."""
    import asyncio
    import json

    import httpx
    import openai
    from openai.types import Completion

    from repotune.serving.errors import Timeout
    from repotune.serving.openai_routes import respond

    async def cut_short():
        raise Timeout(3.0)
        yield  # an async generator, as the model's stream is

    async def body(chat: bool) -> str:
        return "".join([part async for part in respond(cut_short(), chat=chat).body_iterator])

    text = asyncio.run(body(chat=False))
    event = json.loads(text.removeprefix("data: "))
    assert event["error"]["code"] == "timeout" and "data: [DONE]" not in text
    assert event["choices"] == [{"index": 0, "finish_reason": "length", "text": "", "logprobs": None}]
    assert json.loads(asyncio.run(body(chat=True)).removeprefix("data: "))["choices"][0]["delta"] == {}
    # what the openai client makes of it, read from the same bytes
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    response = httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"},
                              request=httpx.Request("POST", "http://127.0.0.1:9/completions"))  # fmt: skip
    with pytest.raises(openai.APIError, match="did not finish within the server's timeout"):
        list(openai.Stream(cast_to=Completion, response=response, client=client))
