"""Editor plugins and OpenAI clients against a real `repotune serve` with bearer tokens: the requests they
send, replayed byte for byte from their public source, and the name the model is served under.

The server serves a tiny model from a folder named `model` (as pipeline outputs are) whose
`train_summary.json` says it was trained on https://github.com/acme/widgets.git: clients call it
`widgets`. Tokens come from REPOTUNE_SERVE_TOKENS, as on a workstation that exposes the server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from tests.serving_helpers import make_serving_model
from tests.tiny_tokenizer import make_tiny_tokenizer

from repotune.data.transforms import fim_prompt
from repotune.serving.server import BackgroundServer, start_background

pytestmark = pytest.mark.integration

CONTINUE_KEY, TABBY_KEY = "continue-key-1", "tabby-key-2"
# README's Continue config.yaml: `defaultCompletionOptions.maxTokens`, within `repotune serve`'s cap.
CONTINUE_MAX_TOKENS = 256

PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\nprint(add(1, 2))\n"
FILEPATH = "src/calc.py"


@pytest.fixture(scope="module")
def widgets(tmp_path_factory: pytest.TempPathFactory) -> BackgroundServer:
    folder = make_serving_model(tmp_path_factory.mktemp("clients") / "model")
    summary = {"data": {"dataset.source": "https://github.com/acme/widgets.git", "train_records": 12}}
    (folder / "train_summary.json").write_text(json.dumps(summary))
    env = {**os.environ, "REPOTUNE_SERVE_TOKENS": f"{CONTINUE_KEY}, {TABBY_KEY}"}
    with start_background(folder, env=env) as running:
        yield running


def _events(response: httpx.Response) -> list[dict]:
    """The JSON events of a server-sent event stream, which must end with `data: [DONE]`."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_the_model_is_served_under_the_repository_name(widgets: BackgroundServer) -> None:
    assert widgets.model_name == "widgets"
    client = openai.OpenAI(base_url=widgets.openai_url, api_key=CONTINUE_KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["widgets"]
    for name in ("widgets", "model"):  # the folder's name stays an alias
        answer = client.completions.create(model=name, prompt="x", max_tokens=2, temperature=0)
        assert answer.model == "widgets"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2)
    # the SDK's retrieve (GET /models/{model}) answers for each name, and a 404 for another
    assert [client.models.retrieve(name).id for name in ("widgets", "model")] == ["widgets", "model"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("tiny")
    assert unknown.value.code == "model_not_found"
    with httpx.Client(base_url=widgets.url, headers=widgets.headers, timeout=60) as http:
        for name in ("widgets", "model"):  # KServe's own routes take the aliases too
            assert http.post(f"/v1/models/{name}:predict", json={"instances": ["x"]}).status_code == 200
        # any other path under the OpenAI prefix: a 404 a client can read, in OpenAI's error shape
        missing = http.post("/openai/v1/embeddings", json={"model": "widgets", "input": "x"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    log = widgets.log_text()
    assert "authentication: a bearer token of 2 in REPOTUNE_SERVE_TOKENS" in log
    assert "time:wall" not in log and "time:cpu" not in log  # one access line a request, no trace lines


def test_continue_autocomplete(widgets: BackgroundServer) -> None:
    """Continue's tab autocomplete with `provider: openai` (continuedev/continue, core/):

    - autocomplete/CompletionProvider.ts `_prepareLlm`: temperature 0.01 when the config sets none, and
      `useLegacyCompletionsEndpoint = true` for OpenAI providers;
    - autocomplete/generation/CompletionStreamer.ts: the OpenAI provider does not `supportsFim()`, so it
      calls `streamComplete(prompt, {raw: true})` with the template already rendered;
    - autocomplete/templating/AutocompleteTemplate.ts: a model name that matches no known family gets
      `stableCodeFimTemplate`, `<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>`, and its 7 stops;
      templating/formatting.ts puts the file's path, commented, before the prefix;
    - autocomplete/templating/getStopTokens.ts: the template's stops, then "\\n\\n", "\\r\\n\\r\\n",
      "/src/", "#- coding: utf-8", "```", then the language's (autocomplete/languages.ts: Python
      "def", "class"): 14 stop strings;
    - llm/llms/OpenAI.ts `_legacystreamComplete` posts `{...toChatBody(options), prompt, stream: true}`
      to `apiBase + "completions"` (llm/openaiTypeConverters.ts `toChatBody`: undefined fields drop
      out of the JSON), with `_getHeaders()`.
    """
    stops = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>", "</fim_middle>",
             "</code>", "\n\n", "\r\n\r\n", "/src/", "#- coding: utf-8", "```", "def", "class"]  # fmt: skip
    prompt = f"<fim_prefix>\n# {FILEPATH}\n{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    body = {"model": "widgets", "max_tokens": CONTINUE_MAX_TOKENS, "temperature": 0.01, "stream": True,
            "stop": stops, "prompt": prompt}  # fmt: skip
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {CONTINUE_KEY}",
        "api-key": CONTINUE_KEY,
    }
    with httpx.stream("POST", f"{widgets.openai_url}/completions", content=json.dumps(body), headers=headers,
                      timeout=120) as response:  # fmt: skip
        events = _events(response)
    text = "".join(event["choices"][0]["text"] for event in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert not any(stop in text for stop in stops)

    # Continue's rendered prompt is the training transform's FIM prompt: greedy, both give one answer.
    client = openai.OpenAI(base_url=widgets.openai_url, api_key=CONTINUE_KEY, max_retries=0, timeout=60)
    as_continue = client.completions.create(model="widgets", prompt=prompt, max_tokens=8, temperature=0)
    assert prompt == fim_prompt(f"\n# {FILEPATH}\n{PREFIX}", SUFFIX)
    as_fim = client.completions.create(
        model="widgets", prompt=f"\n# {FILEPATH}\n{PREFIX}", suffix=SUFFIX, max_tokens=8, temperature=0
    )
    assert as_continue.choices[0].text == as_fim.choices[0].text


def test_continue_autocomplete_from_the_prefix_alone_with_fim_off(tmp_path: Path) -> None:
    """Served with `--fim off` (evaluate's `decision.fim` false: the model fills gaps worse with the
    suffix in view), Continue's rendered template is answered as its prefix alone, to the end of the
    line: the same prompt tokens and text as the prefix sent with a newline stop, or with `suffix`."""
    folder = make_serving_model(tmp_path / "model")
    with start_background(folder, extra_args=["--fim", "off"]) as served:
        client = openai.OpenAI(base_url=served.openai_url, api_key="none", max_retries=0, timeout=60)
        ask = {"model": served.model_name, "max_tokens": 16, "temperature": 0}
        as_continue = client.completions.create(
            prompt=f"<fim_prefix>\n# {FILEPATH}\n{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>", **ask
        )
        by_hand = client.completions.create(prompt=f"\n# {FILEPATH}\n{PREFIX}", stop=["\n"], **ask)
        as_suffix = client.completions.create(prompt=f"\n# {FILEPATH}\n{PREFIX}", suffix=SUFFIX, **ask)
        unstopped = client.completions.create(prompt=f"\n# {FILEPATH}\n{PREFIX}", **ask)
        # A gap at the very start of a file has an empty prefix: it starts where a document starts in
        # training, after EOS, as OpenAI's models start an empty prompt (it was a 400, "the prompt is
        # empty", though the same request is answered on a FIM model).
        at_top = [
            client.completions.create(prompt="", suffix=SUFFIX, **ask),
            client.completions.create(prompt=f"<fim_prefix><fim_suffix>{SUFFIX}<fim_middle>", **ask),
            client.completions.create(prompt=[make_tiny_tokenizer().eos_token_id], stop=["\n"], **ask),
        ]
    assert len({answer.choices[0].text for answer in at_top}) == 1
    assert [answer.usage.prompt_tokens for answer in at_top] == [1, 1, 1]
    texts = {answer.choices[0].text for answer in (as_continue, by_hand, as_suffix)}
    assert len(texts) == 1 and "\n" not in texts.pop()
    assert as_continue.usage.prompt_tokens == by_hand.usage.prompt_tokens == as_suffix.usage.prompt_tokens
    # without a suffix nothing changes: the same prompt runs on past the line when the model goes on
    assert unstopped.choices[0].text.startswith(by_hand.choices[0].text)


def test_continue_chat(widgets: BackgroundServer) -> None:
    """Continue's chat with `provider: openai` (continuedev/continue): core/llm/llms/OpenAI.ts sends
    streamChat through the openai adapter (packages/openai-adapters/src/apis/OpenAI.ts), whose
    `modifyChatBody` adds `stream_options: {include_usage: true}` to the body of
    core/llm/openaiTypeConverters.ts `toChatBody` (messages, model, max_tokens, stream; the options the
    config leaves unset are undefined and drop out of the JSON), posted by the official openai client."""
    body = {
        "messages": [
            {"role": "system", "content": "Always include the language and file name in the info string "
                                          "when you write code blocks."},
            {"role": "user", "content": "What does `add` in src/calc.py return?"},
        ],
        "model": "widgets",
        "max_tokens": CONTINUE_MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CONTINUE_KEY}"}
    with httpx.stream("POST", f"{widgets.openai_url}/chat/completions", json=body, headers=headers,
                      timeout=120) as response:  # fmt: skip
        events = [ChatCompletionChunk.model_validate(event) for event in _events(response)]
    assert events[0].choices[0].delta.role == "assistant"
    finish = [e.choices[0].finish_reason for e in events if e.choices and e.choices[0].finish_reason]
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    usage = events[-1].usage
    assert len(finish) == 1 and usage is not None and usage.completion_tokens <= CONTINUE_MAX_TOKENS
    # Continue sets no temperature, so the answer is sampled, and the tiny model's first draw can be its
    # end of sequence (a CI run drew it): then nothing was written, and the answer stopped.
    assert usage.completion_tokens >= 1 if text else finish == ["stop"]


@pytest.mark.parametrize("suffix", [SUFFIX, None])
def test_tabby_completion(widgets: BackgroundServer, suffix: str | None) -> None:
    """Tabby's `openai/completion` HTTP backend (TabbyML/tabby,
    crates/http-api-bindings/src/completion/openai.rs): `CompletionRequest {model, prompt, suffix:
    Option<String>, max_tokens, temperature, stream: true, presence_penalty}` serialized by serde (a
    missing suffix is `null`), posted to `{api_endpoint}/completions` with `bearer_auth(api_key)`;
    the values are Tabby's defaults (64 decoding tokens, temperature 0.1, presence penalty 0). It reads
    `choices[0].text` from each event until one has a `finish_reason`."""
    body = {"model": "widgets", "prompt": PREFIX, "suffix": suffix, "max_tokens": 64, "temperature": 0.1,
            "stream": True, "presence_penalty": 0.0}  # fmt: skip
    with httpx.stream("POST", f"{widgets.openai_url}/completions", json=body,
                      headers={"Authorization": f"Bearer {TABBY_KEY}"}, timeout=120) as response:  # fmt: skip
        events = _events(response)
    finished = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"] is not None]
    assert len(finished) == 1 and all(isinstance(e["choices"][0]["text"], str) for e in events)


def test_bearer_tokens(widgets: BackgroundServer) -> None:
    with httpx.Client(base_url=widgets.url, timeout=60) as http:
        # Health and readiness stay open for KServe's and Kubernetes' probes.
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v1/models/widgets").status_code == 200
        for method, path in [("GET", "/openai/v1/models"), ("POST", "/openai/v1/completions"),
                             ("POST", "/v1/models/widgets:predict"), ("POST", "/v2/models/widgets/infer"),
                             ("GET", "/metrics")]:  # fmt: skip
            refused = http.request(method, path, json={"instances": ["x"]})
            assert refused.status_code == 401, (path, refused.text)
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "invalid_api_key"
        wrong = http.post("/v1/models/widgets:predict", json={"instances": ["x"]},
                          headers={"Authorization": f"Bearer {CONTINUE_KEY}x"})  # fmt: skip
        assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=widgets.openai_url, api_key="wrong", max_retries=0).models.list()
    for key in (CONTINUE_KEY, TABBY_KEY):
        client = openai.OpenAI(base_url=widgets.openai_url, api_key=key, max_retries=0, timeout=60)
        assert client.chat.completions.create(
            model="widgets", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        ).choices


def test_the_readme_continue_config_matches_the_server(widgets: BackgroundServer) -> None:
    """README's Continue config.yaml parses, names the provider, roles and apiBase these tests use, and
    asks for no more tokens than the server's default cap."""
    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```yaml\n# ~/.continue/config.yaml", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    (model,) = config["models"]
    assert model["provider"] == "openai" and set(model["roles"]) == {"chat", "autocomplete"}
    assert model["apiBase"].endswith("/openai/v1/")
    assert model["defaultCompletionOptions"]["maxTokens"] == CONTINUE_MAX_TOKENS
    assert CONTINUE_MAX_TOKENS <= 512  # `repotune serve --max-tokens` default
