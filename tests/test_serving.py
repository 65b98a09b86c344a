"""Serving: a real `repotune serve` subprocess on 127.0.0.1, talked to with the official openai client and
httpx; the batcher, request checks and model loading in-process. Models are tiny and random: assertions
are on shapes, counts, determinism and errors, not on what the text says."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from tests.serving_helpers import make_serving_model

from repotune.data.transforms import FIM_TOKENS, code_prompt, fim_prompt
from repotune.errors import RepotuneError
from repotune.kvcache import shared_prefix
from repotune.serving import batching
from repotune.serving.batching import Batcher, Completed, GenerationRequest, SamplingParams
from repotune.serving.errors import QueueFull, ServingError, Timeout
from repotune.serving.healing import HealingProcessor, allowed, split_tail
from repotune.serving.loading import load_model
from repotune.serving.model import RepotuneModel, encode_prompt
from repotune.serving.server import free_port, start_background
from repotune.serving.settings import ServeSettings

MAX_TOKENS = 64  # the server's cap in these tests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_serving_model(tmp_path_factory.mktemp("serving") / "tiny")


@pytest.fixture(scope="module")
def server(tiny: Path):
    # A 50 ms batch window makes the concurrency test's batching visible on a slow, busy machine.
    with start_background(
        tiny, max_batch_size=8, max_tokens=MAX_TOKENS, extra_args=["--batch-wait-ms", "50"]
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> RepotuneModel:
    model = RepotuneModel("tiny", tiny, settings=ServeSettings(max_tokens=MAX_TOKENS, batch_wait_ms=20))
    model.load()
    yield model
    model.stop()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.integration
def test_completions_and_chat_through_the_openai_client(server, client: openai.OpenAI) -> None:
    first = client.completions.create(
        model=server.model_name, prompt="def add(a, b):", max_tokens=8, temperature=0
    )
    again = client.completions.create(
        model=server.model_name, prompt="def add(a, b):", max_tokens=8, temperature=0
    )
    choice = first.choices[0]
    assert first.object == "text_completion" and first.model == server.model_name
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.text, str)
    assert 1 <= first.usage.completion_tokens <= 8 and first.usage.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert again.choices[0].text == choice.text  # greedy decoding is deterministic
    # OpenAI's penalties are honoured (they were refused with a 400 before); the first token, with
    # nothing written yet to penalize, is the greedy one. Setting one, even to 0, replaces the
    # server's default line repeat penalty: 0 is plain greedy decoding.
    unpenalized = client.completions.create(
        model=server.model_name, prompt="def add(a, b):", max_tokens=8, temperature=0, frequency_penalty=0
    ).choices[0]
    penalized = client.completions.create(
        model=server.model_name, prompt="def add(a, b):", max_tokens=8, temperature=0,
        frequency_penalty=2.0, presence_penalty=1.0,
    )  # fmt: skip
    assert penalized.choices[0].text != unpenalized.text
    assert penalized.choices[0].text[:1] == unpenalized.text[:1] == choice.text[:1]

    two = client.completions.create(
        model=server.model_name, prompt=["a", "b"], n=2, max_tokens=3, temperature=0.8
    )
    assert sorted(c.index for c in two.choices) == [0, 1, 2, 3]

    chat = client.chat.completions.create(
        model=server.model_name,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert 1 <= chat.usage.completion_tokens <= 6
    assert [m.id for m in client.models.list()] == [server.model_name]


@pytest.mark.integration
def test_streams_match_the_whole_answer_and_end_with_done(server, client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model=server.model_name, prompt="class A:", max_tokens=10, temperature=0
    )
    pieces = client.completions.create(
        model=server.model_name, prompt="class A:", max_tokens=10, temperature=0, stream=True
    )
    chunks = list(pieces)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(
        model=server.model_name, messages=messages, max_tokens=7, temperature=0
    )
    stream = client.chat.completions.create(
        model=server.model_name,
        messages=messages,
        max_tokens=7,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(stream)
    assert events[0].choices[0].delta.role == "assistant"
    assert (
        "".join(e.choices[0].delta.content or "" for e in events if e.choices)
        == chat.choices[0].message.content
    )
    assert events[-1].usage.completion_tokens == chat.usage.completion_tokens

    body = {"model": server.model_name, "prompt": "x", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.openai_url}/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


@pytest.mark.integration
def test_fill_in_the_middle_uses_the_training_transform(server, client: openai.OpenAI) -> None:
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    fim = client.completions.create(
        model=server.model_name,
        prompt=prefix,
        suffix=suffix,
        max_tokens=8,
        temperature=0,
        extra_body={"file_path": "src/calc.py"},
    )
    # The same prompt built by hand with the training transform gives the same greedy completion.
    raw = client.completions.create(
        model=server.model_name,
        prompt=fim_prompt(prefix, suffix, path="src/calc.py"),
        max_tokens=8,
        temperature=0,
    )
    assert fim.choices[0].text == raw.choices[0].text
    assert fim.usage.prompt_tokens == raw.usage.prompt_tokens
    # The openai client's extra_body carries a confidence threshold: 1 cuts every line (no line of the
    # tiny model is certain), 0 none.
    for threshold, cut in ((1.0, True), (0.0, False)):
        gated = client.completions.create(
            model=server.model_name, prompt="def add(a, b):\n    return ", max_tokens=8, temperature=0,
            extra_body={"min_confidence": threshold},
        )  # fmt: skip
        assert (gated.choices[0].text.strip() == "") is cut, threshold


@pytest.mark.integration
def test_kserve_protocols_health_and_metrics(server) -> None:
    name = server.model_name
    with httpx.Client(base_url=server.url, timeout=30) as http:
        v1 = http.post(
            f"/v1/models/{name}:predict", json={"instances": ["def f(", {"prompt": "x", "max_tokens": 3}]}
        )
        assert v1.status_code == 200 and len(v1.json()["predictions"]) == 2
        tensor = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["def f(", "import"]}
        v2 = http.post(f"/v2/models/{name}/infer", json={"inputs": [tensor], "parameters": {"max_tokens": 4}})
        assert v2.status_code == 200
        output = v2.json()["outputs"][0]
        assert output["name"] == "text" and output["datatype"] == "BYTES" and len(output["data"]) == 2
        bad_v1 = http.post(
            f"/v1/models/{name}:predict", json={"instances": [{"prompt": "x", "max_tokens": 0}]}
        )
        assert bad_v1.status_code == 400
        # JSON under another content type (curl -d sends a form's), which KServe hands over unparsed
        body = json.dumps({"instances": ["def f("]})
        for kind in ("application/x-www-form-urlencoded", "application/json; charset=utf-8", "text/plain"):
            typed = http.post(f"/v1/models/{name}:predict", content=body, headers={"content-type": kind})
            assert typed.status_code == 200, (kind, typed.text)
            assert typed.json()["predictions"] == v1.json()["predictions"][:1]
        form = http.post(
            f"/v1/models/{name}:predict",
            content=b"prompt=def",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 400 and "not valid JSON" in form.json()["error"], form.text
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert http.get("/v2/health/live").status_code == 200
        assert http.get(f"/v2/models/{name}/ready").status_code == 200
        assert http.get(f"/v1/models/{name}").json()["ready"] is True
        assert http.get("/v1/models/nope").status_code == 404
        metrics = http.get("/metrics").text
    assert _metric(metrics, "repotune_generate_requests_total") >= 4
    assert "request_predict_seconds" in metrics  # KServe's own histograms sit beside ours


@pytest.mark.integration
def test_an_editor_asking_twice_about_a_file_reuses_the_first_prompt(server, client: openai.OpenAI) -> None:
    """Through the server, as an editor asks: the second completion's prompt starts as the first's did,
    and /metrics counts the prompt tokens that were not read again."""
    body = "".join(f"def f{n}(a, b):\n    return a + b * {n}\n" for n in range(10))

    def reused() -> float:
        return _metric(httpx.get(f"{server.url}/metrics").text, "repotune_prefix_cache_tokens_total")

    before = reused()
    first, second = (
        client.completions.create(model=server.model_name, prompt=body + tail, max_tokens=4, temperature=0)
        for tail in ("import os\n", "import os\nimport re\n")
    )
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # no request before began so
    assert first.usage.prompt_tokens < cached < second.usage.prompt_tokens  # all of the first, at least
    assert reused() - before == cached
    # a chat asked again, streamed with the usage chunk at the end (include_usage) and two choices: one
    # row finds the first answer's prompt kept, the other reads it; a prompt counts its best row's
    chat = {"model": server.model_name, "messages": [{"role": "user", "content": body}], "max_tokens": 4}
    asked = client.chat.completions.create(**chat, temperature=0)
    stream = client.chat.completions.create(
        **chat, temperature=0, n=2, stream=True, stream_options={"include_usage": True}
    )
    last = list(stream)[-1]
    assert last.usage.prompt_tokens == asked.usage.prompt_tokens
    assert last.usage.prompt_tokens_details.cached_tokens == asked.usage.prompt_tokens - 1


@pytest.mark.integration
def test_32_concurrent_clients_are_all_answered_in_batches(server, client: openai.OpenAI) -> None:
    before = httpx.get(f"{server.url}/metrics").text

    def ask(i: int) -> openai.types.Completion:
        if i % 2:
            return client.completions.create(
                model=server.model_name, prompt=f"item {i}", max_tokens=12, temperature=0
            )
        return client.chat.completions.create(
            model=server.model_name,
            messages=[{"role": "user", "content": f"q {i}"}],
            max_tokens=12,
            temperature=0,
        )

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    assert len(answers) == 32 and all(a.usage.completion_tokens >= 1 for a in answers)
    after = httpx.get(f"{server.url}/metrics").text
    requests = _metric(after, "repotune_generate_requests_total") - _metric(
        before, "repotune_generate_requests_total"
    )
    batches = _metric(after, "repotune_generate_batches_total") - _metric(
        before, "repotune_generate_batches_total"
    )
    assert requests == 32
    assert batches <= 16, f"{batches} batches for 32 requests: not batched"


BAD_REQUESTS = [
    # (route, body: dict or raw bytes, status, param)
    ("completions", b"{not json", 400, None),
    ("completions", b"[1, 2]", 400, None),
    ("completions", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("completions", {"prompt": "x"}, 400, "model"),
    ("completions", {"model": "M", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"model": "M", "prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("completions", {"model": "M", "prompt": "x", "max_tokens": MAX_TOKENS + 1}, 400, "max_tokens"),
    ("completions", {"model": "M", "prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ("completions", {"model": "M", "prompt": 42}, 400, "prompt"),
    ("completions", {"model": "M", "prompt": "word " * 3000}, 400, "prompt"),
    ("completions", {"model": "M", "prompt": [10**9]}, 400, "prompt"),
    ("completions", {"model": "M", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ("completions", {"model": "M", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ("completions", {"model": "M", "prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("completions", {"model": "M", "prompt": "x", "logprobs": 1, "echo": True, "stream": True}, 400, "echo"),
    (
        "completions",
        {"model": "M", "prompt": "x", "logprobs": 1, "echo": True, "file_path": "a.py"},
        400,
        "file_path",
    ),
    (
        "completions",
        {"model": "M", "prompt": "x", "logprobs": 0, "echo": True, "retrieval": True},
        400,
        "retrieval",
    ),
    (
        "chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "x"}], "retrieval": True},
        400,
        "retrieval",
    ),
    (
        "chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    (
        "chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
        400,
        "top_logprobs",
    ),
    (
        "chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "word " * 3000}]},
        400,
        "messages",
    ),
    (
        "chat/completions",
        {"model": "M", "messages": [{"role": "bogus", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    ("chat/completions", {"model": "M", "messages": "hello"}, 400, "messages"),
    ("chat/completions", {"model": "M", "messages": []}, 400, "messages"),
    ("chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n"),
    (
        "chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": 3}]},
        400,
        "messages.0.content",
    ),
]


@pytest.mark.integration
def test_bad_requests_get_openai_style_4xx(server, client: openai.OpenAI) -> None:
    with httpx.Client(base_url=server.openai_url, timeout=30) as http:
        for route, body, status, param in BAD_REQUESTS:
            if isinstance(body, dict):
                body = json.dumps(body).replace('"M"', json.dumps(server.model_name)).encode()
            response = http.post(f"/{route}", content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (route, body[:80], response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], error
            assert error["param"] == param, (body[:80], error)
        too_big = http.post("/completions", content=b"x" * 1_100_000)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
        # a route asked with a method it does not take: 405 naming the one it does, not "no such route"
        misdirected = [
            ("GET", "/completions", "POST"),
            ("GET", "/chat/completions", "POST"),
            ("POST", "/models", "GET"),
            ("DELETE", f"/models/{server.model_name}", "GET"),
        ]
        for method, route, allow in misdirected:
            response = http.request(method, route)
            assert response.status_code == 405 and response.headers["allow"] == allow, (method, route)
            assert response.json()["error"]["code"] == "method_not_allowed", response.text
        assert http.get("/embeddings").json()["error"]["code"] == "unknown_url"
    with pytest.raises(openai.BadRequestError, match="cap"):
        client.completions.create(model=server.model_name, prompt="x", max_tokens=MAX_TOKENS * 2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])


@pytest.mark.integration
def test_echo_puts_the_prompt_in_front_whether_text_or_token_ids(
    tiny: Path, server, client: openai.OpenAI
) -> None:
    from transformers import AutoTokenizer

    text = "def add(a, b):"
    ids = AutoTokenizer.from_pretrained(tiny)(text, add_special_tokens=False)["input_ids"]

    def complete(prompt: str | list[int]) -> str:
        answer = client.completions.create(
            model=server.model_name, prompt=prompt, max_tokens=3, echo=True, temperature=0
        )
        return answer.choices[0].text

    answers = [complete(text), complete(ids)]
    assert answers[0] == answers[1] and answers[0].startswith(text) and len(answers[0]) > len(text)


def _direct_logprobs(tiny: Path, ids: list[int]) -> tuple[list[float], float]:
    """From the model read straight: each token's log probability given the ones before it, and that of
    the likeliest token after them all."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    return [float(logits[i - 1, ids[i]]) for i in range(1, len(ids))], float(logits[-1].max())


def test_lm_evaluation_harness_scores_a_continuation_as_the_model_does(tiny: Path, server) -> None:
    """lm-evaluation-harness's ``local-completions`` asks a text's log-likelihood so: its
    ``_create_payload`` for ``generate=False`` (the token ids of context and continuation, one token
    to generate, ``logprobs`` 1, ``echo``), and ``parse_logprobs`` reads the continuation's tokens
    (``token_logprobs[ctxlen:-1]``) and whether each was the likeliest (``top_logprobs``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    # Longer than the prefix cache's 16 tokens: the prompt read to score it is kept for generate.
    context = tokenizer('def add(a, b):\n    """The sum of a and b."""', add_special_tokens=False).input_ids
    continuation = tokenizer("\n    return a + b", add_special_tokens=False).input_ids
    assert len(context) > 16
    prompts = [context + continuation, context + continuation[:2]]

    def ask(batch: list[list[int]]) -> dict:
        payload = {"model": server.model_name, "prompt": batch, "temperature": 0, "max_tokens": 1,
                   "logprobs": 1, "seed": 1234, "echo": True}  # fmt: skip
        answer = httpx.post(f"{server.openai_url}/completions", json=payload, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    # Both in one request (lm-evaluation-harness's --batch_size 2), first: scored together, right-padded,
    # and each prompt's part of that pass kept, so that generate goes on from all but its last token
    # (read to go on): every row is scored, so on any device (``Batcher._cheaper_alone``).
    together = ask(prompts)
    assert together["usage"]["prompt_tokens_details"]["cached_tokens"] == sum(len(p) - 1 for p in prompts)
    # One prompt a request (its default batch size): the same, and with the same numbers.
    alone = [ask([ids]) for ids in prompts]
    assert [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in alone] == [
        len(p) - 1 for p in prompts
    ]
    choices = sorted(together["choices"], key=lambda choice: choice["index"])
    for choice, one in zip(choices, alone, strict=True):
        assert choice["text"] == one["choices"][0]["text"]
        assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
            one["choices"][0]["logprobs"]["token_logprobs"][1:], abs=1e-4
        )
    for choice, ids in zip(choices, prompts, strict=True):
        got = choice["logprobs"]["token_logprobs"]
        assert len(got) == len(ids) + 1 and got[0] is None  # the prompt's tokens, then the one generated
        direct, following = _direct_logprobs(tiny, ids)
        assert got[1 : len(ids)] == pytest.approx(direct, abs=1e-4)
        # the token generated after the prompt was scored (greedy: the likeliest) is what it would be alone
        assert got[-1] == pytest.approx(max(choice["logprobs"]["top_logprobs"][-1].values()), abs=1e-6)
        assert got[-1] == pytest.approx(following, abs=1e-4)
        scored = got[len(context) : -1]
        assert sum(scored) == pytest.approx(sum(direct[len(context) - 1 :]), abs=1e-3)
        tops = choice["logprobs"]["top_logprobs"][len(context) : -1]
        is_greedy = all(token == max(top.values()) for token, top in zip(scored, tops, strict=True))
        assert not is_greedy  # an untrained model does not write ``return a + b`` greedily
        assert "".join(choice["logprobs"]["tokens"]) == choice["text"]


def test_logprobs_are_of_the_tokens_that_write_the_completion(
    tiny: Path, server, client: openai.OpenAI
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer("def add(a, b):", add_special_tokens=False).input_ids

    def ask(**options):
        return client.completions.create(
            model=server.model_name, prompt=ids, max_tokens=8, temperature=0, frequency_penalty=0, **options
        ).choices[0]

    plain, scored = ask(), ask(logprobs=3)
    assert plain.logprobs is None and scored.text == plain.text  # asking for them changes no answer
    logprobs = scored.logprobs
    assert "".join(logprobs.tokens) == scored.text
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    written = tokenizer(scored.text, add_special_tokens=False).input_ids
    assert logprobs.token_logprobs == pytest.approx(
        _direct_logprobs(tiny, ids + written)[0][len(ids) - 1 :], abs=1e-4
    )
    for logprob, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) == 3 and logprob == pytest.approx(max(top.values()))  # greedy: the likeliest
    # Echoed, the prompt's tokens come first, the first of them with nothing to predict it.
    echoed = ask(logprobs=0, echo=True)
    assert echoed.text == tokenizer.decode(ids) + scored.text
    assert echoed.logprobs.token_logprobs[0] is None and echoed.logprobs.top_logprobs[len(ids)] == {}
    assert echoed.logprobs.token_logprobs[len(ids) :] == pytest.approx(logprobs.token_logprobs, abs=1e-4)
    assert echoed.logprobs.text_offset[len(ids)] == len(tokenizer.decode(ids))


@pytest.mark.integration
def test_echoed_offsets_start_after_a_bos_the_prompt_text_does_not_spell(tmp_path: Path) -> None:
    """A tokenizer that adds BOS puts a token in front of a text prompt that the echoed text does not
    spell: it starts at 0, writing nothing of it, and every other token starts where its text does."""
    from repotune.serving.protocol import CompletionRequest

    folder = make_serving_model(tmp_path / "bos")
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "bos_token": settings["eos_token"]}))
    model = RepotuneModel("tiny", folder, settings=ServeSettings(max_tokens=MAX_TOKENS))
    model.load()
    # As Llama's and Mistral's tokenizers do (transformers reads the setting from their own classes).
    model.tokenizer.add_bos_token = True
    try:
        prompt = "def add(a, b):"
        ids = encode_prompt(model.tokenizer, prompt)
        assert ids[0] == model.tokenizer.bos_token_id  # the tokenizer adds one
        request = CompletionRequest(
            model="tiny", prompt=prompt, max_tokens=4, logprobs=1, echo=True, temperature=0
        )
        choice = asyncio.run(model.create_completion(request)).choices[0]
    finally:
        model.stop()
    tokens, at = choice.logprobs.tokens, choice.logprobs.text_offset
    assert choice.text.startswith(prompt) and tokens[0] == model.tokenizer.bos_token and at[0] == 0
    eos = model.tokenizer.eos_token  # the end of sequence that may end the completion writes no text
    written = [(token, offset) for token, offset in zip(tokens[1:], at[1:], strict=True) if token != eos]
    assert len(written) >= len(ids) - 1
    for token, offset in written:
        assert choice.text[offset : offset + len(token)] == token
    assert at[len(ids)] == len(prompt)  # the completion starts where the echoed prompt ends


def test_chat_logprobs_are_of_the_tokens_of_the_answer(server, client: openai.OpenAI) -> None:
    def ask(**options):
        return client.chat.completions.create(
            model=server.model_name, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8,
            temperature=0, **options,
        ).choices[0]  # fmt: skip

    plain, scored = ask(), ask(logprobs=True, top_logprobs=2)
    assert plain.logprobs is None and scored.message.content == plain.message.content
    tokens = scored.logprobs.content
    assert "".join(token.token for token in tokens) == scored.message.content and tokens
    for token in tokens:
        assert bytes(token.bytes) == token.token.encode() and len(token.top_logprobs) == 2
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)  # greedy: the likeliest
    assert [token.top_logprobs for token in ask(logprobs=True).logprobs.content] == [[]] * len(tokens)


def test_streamed_logprobs_join_to_the_whole_answers(tiny: Path, server, client: openai.OpenAI) -> None:
    """Streamed, each chunk carries the tokens its text completes; joined, they are the whole answer's,
    with the same text offsets, through the openai client as it reads streams."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny)("def add(a, b):", add_special_tokens=False).input_ids
    options = {"model": server.model_name, "prompt": ids, "max_tokens": 12, "temperature": 0,
               "frequency_penalty": 0, "logprobs": 2}  # fmt: skip
    whole = client.completions.create(**options).choices[0]
    chunks = [chunk.choices[0] for chunk in client.completions.create(stream=True, **options)]
    assert "".join(chunk.text for chunk in chunks) == whole.text and len(chunks) > 2
    joined = {
        key: [value for chunk in chunks for value in getattr(chunk.logprobs, key)]
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    }
    assert joined["tokens"] == whole.logprobs.tokens and "".join(joined["tokens"]) == whole.text
    assert joined["text_offset"] == whole.logprobs.text_offset
    assert joined["token_logprobs"] == pytest.approx(whole.logprobs.token_logprobs, abs=1e-4)
    assert [list(top) for top in joined["top_logprobs"]] == [list(top) for top in whole.logprobs.top_logprobs]
    assert chunks[-1].finish_reason == whole.finish_reason

    chat = {"model": server.model_name, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8,
            "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    answer = client.chat.completions.create(**chat).choices[0]
    parts = [
        chunk.choices[0] for chunk in client.chat.completions.create(stream=True, **chat) if chunk.choices
    ]
    assert "".join(part.delta.content or "" for part in parts) == answer.message.content
    tokens = [token for part in parts if part.logprobs for token in part.logprobs.content]
    assert [token.token for token in tokens] == [token.token for token in answer.logprobs.content]
    assert [token.logprob for token in tokens] == pytest.approx(
        [token.logprob for token in answer.logprobs.content], abs=1e-4
    )
    assert all(len(token.top_logprobs) == 2 for token in tokens) and tokens


def test_a_rows_logprobs_follow_the_text_it_returns() -> None:
    """The tokens returned are those that write the returned text: not those of the held-back prompt
    text before it, cut where a stop string cuts the text, in step with a first line decoded again,
    and the end of sequence that ended it last. Streamed, the pieces carry the same tokens."""
    import torch
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.serving.batching import Handle, Piece, _Row

    tokenizer = make_tiny_tokenizer()
    eos = frozenset({tokenizer.eos_token_id})
    distribution = torch.log_softmax(torch.linspace(0, 3, len(tokenizer)), dim=-1)
    loop = asyncio.new_event_loop()

    def finished(request: GenerationRequest, *fed: tuple[list[str], list[float]], **kwargs):
        """``request``'s row fed the texts of ``fed``, each after the row was set back (if it was), then
        ended by an end of sequence; its streamed pieces carry the same tokens as the whole row."""
        handle = Handle(request, loop)
        row = _Row(handle, tokenizer, lambda outcome: None)
        row.distribution = distribution
        for texts, margins in fed:
            row.rewound = False
            _fed(row, texts, margins, tokenizer, eos, **kwargs)
        if not row.done:
            row.add(tokenizer.eos_token_id, eos)

        async def streamed():
            return [item async for item in handle.stream()]

        *pieces, done = loop.run_until_complete(streamed())
        assert all(isinstance(piece, Piece) for piece in pieces) and pieces
        assert "".join(piece.text for piece in pieces) == done.text
        assert tuple(token for piece in pieces for token in piece.logprobs) == done.logprobs
        return done

    try:
        healed = finished(GenerationRequest([1], 12, SamplingParams(0.0), heal="\n", logprobs=2),
                          (["\n", "return", " a", "\n"], [1.0] * 4))  # fmt: skip
        assert healed.text == "return a\n"
        pieces = [token.text for token in healed.logprobs]
        assert "".join(pieces) == healed.text and healed.ended_by.text == tokenizer.eos_token
        first = tokenizer.encode("return", add_special_tokens=False)[0]
        assert healed.logprobs[0].logprob == pytest.approx(float(distribution[first]))
        assert [len(token.top) for token in (*healed.logprobs, healed.ended_by)] == [2] * (len(pieces) + 1)

        cut = finished(GenerationRequest([1], 12, SamplingParams(0.0), stop=(" a",), logprobs=0),
                       (["return", " a", "\n"], [1.0] * 3))  # fmt: skip
        written = tokenizer.encode("return", add_special_tokens=False)
        assert cut.text == "return" and "".join(t.text for t in cut.logprobs) == "return"
        assert len(cut.logprobs) == len(written) and cut.ended_by is None  # the stop string ended it

        # "return a" copies the line above: decoded again from " a" (runner-up " b"), then it ends.
        (b,) = tokenizer.encode(" b", add_special_tokens=False)
        again = GenerationRequest([1], 12, SamplingParams(0.0), line_above="return a", logprobs=1)
        redone = finished(again, (["return", " a", "\n"], [1.0, 0.2, 1.0]), (["\n"], [1.0]), runner=b)
        assert redone.text == "return b\n"
        assert "".join(t.text for t in redone.logprobs) == redone.text and redone.ended_by is not None
        (a,) = tokenizer.encode(" a", add_special_tokens=False)
        # " b" took the place of " a", which won by 0.2: its log probability is 0.2 below.
        assert redone.logprobs[len(written)].logprob == pytest.approx(float(distribution[a]) - 0.2)
    finally:
        loop.close()


def test_batched_rows_match_rows_generated_alone(loaded: RepotuneModel) -> None:
    tokenizer = loaded.tokenizer
    prompts = ["def add(a, b):", "x", "class Greeter:\n    def greet(self, name):", "import os"]
    requests = [
        GenerationRequest(encode_prompt(tokenizer, p), max_new_tokens=6 + i, sampling=SamplingParams(0.0))
        for i, p in enumerate(prompts)
    ]

    async def alone() -> list[str]:
        return [(await loaded.submit(r).result()).text for r in requests]

    async def together() -> list:
        return await asyncio.gather(*(loaded.submit(r).result() for r in requests))

    batches = loaded.batcher.batches
    single = asyncio.run(alone())
    assert loaded.batcher.batches == batches + len(prompts)
    batched = asyncio.run(together())
    assert loaded.batcher.batches == batches + len(prompts) + 1  # all four in one generate()
    assert [r.text for r in batched] == single  # left padding changes nothing
    # Each row stops at its own max_new_tokens (unless EOS came first), though the batch runs longer.
    assert [r.completion_tokens for r in batched] == [6, 7, 8, 9] or all(
        r.finish_reason == "stop" for r in batched if r.completion_tokens < 6
    )


def test_penalties_lower_what_the_completion_wrote_row_by_row(loaded: RepotuneModel) -> None:
    import torch

    from repotune.serving.batching import PenaltyProcessor

    # OpenAI's formula on the completion's tokens only (the prompt is the first 2 columns).
    sampling = [SamplingParams(0.0, presence_penalty=0.5, frequency_penalty=1.0), SamplingParams(0.0)]
    input_ids = torch.tensor([[5, 7, 3, 3, 4], [3, 3, 3, 3, 3]])
    scores = torch.zeros((2, 8))
    penalized = PenaltyProcessor(sampling, starts=[2, 2])(input_ids, scores)
    assert penalized[0].tolist() == [0, 0, 0, -2.5, -1.5, 0, 0, 0]  # 3 written twice, 4 once; 5, 7 prompt
    assert penalized[1].tolist() == [0.0] * 8  # no penalty asked: untouched, in the same batch

    # The tiny random model, greedy, writes one token over and over; a frequency penalty in the same
    # batch turns only its own row away from what it wrote.
    _turns_away_in_its_own_row(loaded, SamplingParams(0.0, frequency_penalty=2.0))


def _turns_away_in_its_own_row(loaded: RepotuneModel, penalized: SamplingParams) -> str:
    """Generate 16 tokens after "x" plain and with ``penalized``, in one batch: the tiny random model,
    greedy, writes one token over and over, and only the penalized row turns away (after its first
    token, when nothing written is there to penalize). Returns the plain row's text."""
    ids = encode_prompt(loaded.tokenizer, "x")

    async def both() -> list:
        rows = [SamplingParams(0.0), penalized]
        handles = [loaded.submit(GenerationRequest(ids, max_new_tokens=16, sampling=s)) for s in rows]
        return [await handle.result() for handle in handles]

    batches = loaded.batcher.batches
    plain, varied = asyncio.run(both())
    assert loaded.batcher.batches == batches + 1  # one generate() for both rows
    assert len(set(plain.text)) == 1 and len(plain.text) == 16
    assert varied.text[0] == plain.text[0] and len(set(varied.text)) > 8
    return plain.text


def test_the_line_repeat_penalty_is_the_default_of_completions_only(loaded: RepotuneModel) -> None:
    from repotune.decoding import LINE_REPEAT_PENALTY
    from repotune.serving.protocol import CompletionRequest, Instance

    # A request that sets no OpenAI penalty decodes with the server's line repeat penalty (what the
    # evaluate stage scored); one that sets either, even to 0, gets OpenAI's semantics alone.
    plain = CompletionRequest(model="tiny", prompt="x")
    assert plain.sampling(1.0, line_penalty=LINE_REPEAT_PENALTY).line_penalty == LINE_REPEAT_PENALTY
    assert (
        CompletionRequest(model="tiny", prompt="x", frequency_penalty=0).sampling(1.0, 1.0).line_penalty == 0
    )
    assert Instance(prompt="x", presence_penalty=0.5).sampling(0.0, 1.0).line_penalty == 0
    assert loaded.settings.line_repeat_penalty == LINE_REPEAT_PENALTY
    with pytest.raises(RepotuneError, match="line_repeat_penalty"):
        ServeSettings(line_repeat_penalty=-1)

    # The line penalty, too, turns only its own row away from what it wrote on the line.
    looping = _turns_away_in_its_own_row(loaded, SamplingParams(0.0, line_penalty=2.0))

    # Through KServe v1, which decodes greedily: the default penalty is on unless the instance says.
    async def predicted(instance: dict) -> str:
        return (await loaded.predict({"instances": [instance]}))["predictions"][0]

    default = asyncio.run(predicted({"prompt": "x", "max_tokens": 16}))
    assert len(set(default)) > 1
    assert asyncio.run(predicted({"prompt": "x", "max_tokens": 16, "frequency_penalty": 0})) == looping


def test_stop_strings_cut_the_text_and_streams_hold_them_back(loaded: RepotuneModel) -> None:
    tokenizer = loaded.tokenizer
    ids = encode_prompt(tokenizer, "def add(a, b):")

    async def whole():
        return await loaded.submit(GenerationRequest(ids, 20, SamplingParams(0.0))).result()

    full = asyncio.run(whole())
    assert len(full.text) >= 4
    stop = full.text[2:4]

    async def streamed() -> tuple[list[str], object]:
        pieces, last = [], None
        async for item in loaded.submit(
            GenerationRequest(ids, 20, SamplingParams(0.0), stop=(stop,))
        ).stream():
            if isinstance(item, str):
                pieces.append(item)
            else:
                last = item
        return pieces, last

    pieces, result = asyncio.run(streamed())
    assert result.text == full.text[: full.text.find(stop)] and result.finish_reason == "stop"
    assert "".join(pieces) == result.text and stop not in "".join(pieces)


def test_split_tail_holds_back_trailing_whitespace_only() -> None:
    assert split_tail("def f():\n    ") == ("def f():", "\n    ")
    assert split_tail("x = ") == ("x =", " ")
    assert split_tail("a\n\n\t") == ("a", "\n\n\t")
    assert split_tail("x = 1") == ("x = 1", "")
    assert split_tail("   ") == ("   ", "")  # nothing would be left to prompt with
    assert split_tail("") == ("", "")
    texts = [(1, " "), (2, "\n"), (3, "\n   "), (4, "\n    "), (5, " for"), (6, "\n\n"), (7, "  ")]
    assert allowed("\n    ", texts) == [2, 3, 4]  # prefixes of the held-back text
    assert allowed(" ", texts) == [1, 5]  # " " itself, or " " and a word; "  " would write more
    assert allowed("  ", texts) == [1, 7]
    assert allowed("  \n   ", texts) == [1, 7]  # the held-back text's first two spaces
    # At the start of an empty line its indentation is still to be written: "\n   " may write it, but
    # "\n\n" would leave the cursor's line blank.
    assert allowed("\n", texts) == [2, 3, 4]
    assert allowed("\n\n", texts) == [2, 6]


def test_held_back_whitespace_is_written_once_not_more(loaded: RepotuneModel) -> None:
    """A token that writes all of the held-back whitespace and goes on with more (``"  "`` for a held-back
    ``" "``, ``"\\n      "`` for ``"\\n    "``) indents the completion twice: SmolLM2 answered
    ``"def f():\\n    "`` with ``"    return None"``, 58 of the 63 tokens allowed there writing more
    whitespace. The tests' tokenizer has such tokens; here a processor stands for a model that prefers
    them, as SmolLM2 did, and the first token is still one that writes the whitespace once."""
    import torch
    from transformers import LogitsProcessorList

    tokenizer, model = loaded.tokenizer, loaded.loaded.model
    texts = loaded.batcher.token_texts.texts
    ids = encode_prompt(tokenizer, "x =")
    for heal in (" ", "\n "):
        more = [
            i
            for i, text in texts
            if len(text) > len(heal) and text.startswith(heal) and text[len(heal)].isspace()
        ]
        assert more, "the tokenizer should have tokens that write more whitespace"
        assert not set(more) & set(allowed(heal, texts))

        def prefer(input_ids: torch.Tensor, scores: torch.Tensor, more: list[int] = more) -> torch.Tensor:
            scores[:, more] += 1000.0
            return scores

        processors = LogitsProcessorList(
            [prefer, HealingProcessor([heal], len(ids), loaded.batcher.token_texts)]
        )
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=len(heal), do_sample=False,
                pad_token_id=tokenizer.eos_token_id, logits_processor=processors,
            )  # fmt: skip
        # The tokens up to the one that writes the last of the held-back text (free after it).
        tokens = out[0, len(ids) :].tolist()
        upto = next(k for k in range(1, len(tokens) + 1) if len(tokenizer.decode(tokens[:k])) >= len(heal))
        first = tokenizer.decode(tokens[:upto])
        assert first.startswith(heal) and not first[len(heal) :][:1].isspace(), (heal, first)

    # At the start of an empty line (a held-back "\n") the line's indentation is still to be written:
    # a model that prefers to write it with the newline, as BPE models do, may.
    indentations = [i for i, text in texts if len(text) > 1 and text[0] == "\n" and not text[1:].strip(" ")]
    assert set(indentations) <= set(allowed("\n", texts)) and indentations

    def indent(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, indentations] += 1000.0
        return scores

    processors = LogitsProcessorList([indent, HealingProcessor(["\n"], len(ids), loaded.batcher.token_texts)])
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.eos_token_id,
            logits_processor=processors,
        )  # fmt: skip
    assert out[0, -1].item() in indentations


@pytest.mark.parametrize("heal", ["\n    ", " ", "\n\n", "\n        "])
def test_generation_writes_the_held_back_whitespace_first(loaded: RepotuneModel, heal: str) -> None:
    """Random weights would rarely write an indentation by chance: the processor makes every greedy
    continuation start with it, and the served text is what comes after it, streamed or whole."""
    import torch
    from transformers import LogitsProcessorList

    tokenizer, model = loaded.tokenizer, loaded.loaded.model
    texts = loaded.batcher.token_texts
    assert texts.supported  # the tests' tokenizer is byte-level BPE, like SmolLM2's and Qwen's
    for head in ("def add(a, b):", "class Greeter:\n    def greet(self, name):", "x ="):
        ids = encode_prompt(tokenizer, head)
        processor = HealingProcessor([heal], len(ids), texts)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                logits_processor=LogitsProcessorList([processor]),
            )  # fmt: skip
        written = tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
        assert written.startswith(heal), (head, written)
        # A row that goes on from tokens it wrote (set back to decode its first line again) is held to
        # what is left: its tokens so far, at the end of its prompt, count from its own start column.
        begun = tokenizer.encode(heal[:1], add_special_tokens=False)
        processor = HealingProcessor(["", heal], [len(ids) + len(begun), len(ids)], texts)
        batch = torch.tensor([ids + begun, ids + begun])
        with torch.no_grad():
            out = model.generate(
                batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                logits_processor=LogitsProcessorList([processor]),
            )  # fmt: skip
        resumed = tokenizer.decode(out[1, len(ids) :].tolist(), skip_special_tokens=True)
        assert resumed.startswith(heal), (head, resumed)

        async def served(request: GenerationRequest) -> tuple[list[str], object]:
            pieces, last = [], None
            async for item in loaded.submit(request).stream():
                if isinstance(item, str):
                    pieces.append(item)
                else:
                    last = item
            return pieces, last

        pieces, result = asyncio.run(served(GenerationRequest(ids, 12, SamplingParams(0.0), heal=heal)))
        assert result.text == written[len(heal) :] and "".join(pieces) == result.text


def test_text_prompts_hold_back_their_trailing_whitespace(loaded: RepotuneModel) -> None:
    tokenizer = loaded.tokenizer

    def prompt(text: str, suffix: str | None = None):
        return loaded.text_prompt(text, suffix, None, retrieval=False, max_tokens=4, default_max_tokens=None)

    plain = prompt("def add(a, b):\n    ")
    assert plain.ids == encode_prompt(tokenizer, "def add(a, b):") and plain.heal == "\n    "
    assert prompt("def add(a, b):").heal == ""
    fim = prompt("def add(a, b):\n    ", "\n")  # a FIM prompt ends in <fim_middle>: nothing to hold back
    assert fim.heal == "" and fim.ids == encode_prompt(
        tokenizer, fim_prompt("def add(a, b):\n    ", "\n", path=None, tokenizer=tokenizer)
    )


def test_whitespace_no_token_writes_is_not_held_back(loaded: RepotuneModel) -> None:
    """The tests' byte-level tokenizer, like SmolLM2's, has no token for U+2028 or U+3000 alone (their
    bytes are written one at a time, and a lone byte decodes to U+FFFD): held back, they could never be
    written, and the completion came back empty. Only what follows the last such character is held back;
    and a row whose held-back text no token can write still gets its completion."""
    tokenizer = loaded.tokenizer

    def prompt(text: str):
        return loaded.text_prompt(text, None, None, retrieval=False, max_tokens=4, default_max_tokens=None)

    for text, heal in [("x = 1\u2028", ""), ("x = 1 \u3000", ""), ("x = 1\u3000 ", " "), ("x = 1\n ", "\n ")]:
        built = prompt(text)
        assert built.heal == heal and built.ids == encode_prompt(tokenizer, text[: len(text) - len(heal)])

    ids = encode_prompt(tokenizer, "x = 1")

    async def both() -> list:
        rows = [GenerationRequest(ids, 6, SamplingParams(0.0), heal=heal) for heal in ("", "\u2028")]
        return [await loaded.submit(row).result() for row in rows]

    plain, healed = asyncio.run(both())
    # Nothing agrees with "\u2028" from the first token on: the row goes free, as if nothing were held.
    assert plain.text and healed.text == plain.text


@pytest.mark.integration
def test_a_prompt_ending_in_whitespace_no_token_writes_is_completed(
    tiny: Path, server, client: openai.OpenAI
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    for text in ("x = 1\u2028", "x = 1 \u3000"):
        ask = {"model": server.model_name, "max_tokens": 6, "temperature": 0, "frequency_penalty": 0}
        served = client.completions.create(prompt=text, **ask).choices[0].text
        # token ids are never held back from: the prompt as the model reads it, whole
        whole = client.completions.create(prompt=encode_prompt(tokenizer, text), **ask).choices[0].text
        assert served == whole and served, (text, served, whole)


def _arrives_during(batcher: Batcher, first: GenerationRequest, second: GenerationRequest) -> list:
    """``first``, then ``second`` once ``first`` has streamed its first text: the two ``Completed`` rows
    in the order they ended and, for each, how many pieces ``first`` had streamed by then. Checks that
    ``first``'s pieces add up to its text."""

    async def run() -> list:
        running = batcher.submit(first)
        order: list = []
        pieces: list[str] = []
        later: asyncio.Task | None = None
        streamed = 0

        async def wait(handle) -> None:
            result = await handle.result()
            order.append(("second", result, streamed))

        async for item in running.stream():
            if isinstance(item, str):
                streamed += 1
                pieces.append(item)
                if later is None:
                    later = asyncio.create_task(wait(batcher.submit(second)))
            else:
                order.append(("first", item, streamed))
                assert "".join(pieces) == item.text  # nothing streamed twice or lost over a turn
        assert later is not None
        await later
        return order

    return asyncio.run(run())


def test_a_long_answer_gives_way_to_a_request_that_arrives_behind_it(loaded: RepotuneModel) -> None:
    """A tab completion asked while a chat answer is being written: without turns it waits for the
    whole answer; with them it is answered after ``turn_tokens`` more tokens, and the long answer
    resumes and comes out as it would have in one go (greedy, and sampled with the same penalties)."""
    tokenizer = loaded.tokenizer
    ids = encode_prompt(tokenizer, "def add(a, b):")
    long_tokens = 48
    # Sampling settings unlike the short request's, so the two can never share a batch; a frequency
    # penalty, whose counts must carry over a turn (the tiny model, greedy, repeats one token).
    chat = SamplingParams(0.0, frequency_penalty=1.5)
    first = GenerationRequest(ids, long_tokens, chat, stop=())
    second = GenerationRequest(encode_prompt(tokenizer, "x"), 3, SamplingParams(0.7, seed=1), stop=())

    def served(turn_tokens: int) -> tuple[list, Batcher]:
        batcher = Batcher(loaded.loaded.model, tokenizer, batch_wait_ms=0, turn_tokens=turn_tokens)
        try:
            return _arrives_during(batcher, first, second), batcher
        finally:
            batcher.stop()

    assert ServeSettings().turn_tokens == 32  # the server's default: turns on
    for bad in (-1, 1.5, True):
        with pytest.raises(RepotuneError, match="--turn-tokens"):
            ServeSettings(turn_tokens=bad)
    waited, plain = served(0)
    assert [name for name, _, _ in waited] == ["first", "second"]  # the short one waited for all 48
    assert plain.turns_given == 0

    turns, batcher = served(8)
    names = [name for name, _, _ in turns]
    assert names == ["second", "first"], names
    answered_after = turns[0][2]
    assert answered_after < long_tokens // 2  # pieces of the long answer streamed before it
    assert batcher.turns_given >= 1 and batcher.rows == 2  # a turn given is not a new request
    long_alone, long_with_turns = waited[0][1], turns[1][1]
    assert long_with_turns.completion_tokens == long_alone.completion_tokens == long_tokens
    assert long_with_turns.text == long_alone.text and len(set(long_alone.text)) > 4  # penalized


def test_a_prompt_that_starts_like_the_one_before_reads_only_what_is_new(loaded: RepotuneModel) -> None:
    """An editor's second request on the same file: the keys and values of the first are reused up to
    the tokens the two share, and the answers are those of prompts read whole; a prompt that starts
    otherwise (another file) is read whole. Several rows in one batch each read their prompt alone after
    their kept prefix where that costs less, and decode together, writing what the batch read whole
    writes."""
    tokenizer = loaded.tokenizer
    body = "".join(f"def f{n}(a, b):\n    return a + b * {n}\n" for n in range(12))
    prompts = [
        encode_prompt(tokenizer, body + "def g("),
        encode_prompt(tokenizer, body + "def h(x"),  # typed on: the same file, a new last line
        encode_prompt(tokenizer, "import os\n" + body),  # another file
        encode_prompt(tokenizer, "import os\n" + body + "x"),  # that file, typed on
    ]
    requests = [GenerationRequest(ids, 12, SamplingParams(0.0), stop=()) for ids in prompts]

    async def one_by_one(batcher: Batcher) -> list[str]:
        return [(await batcher.submit(r).result()).text for r in requests]

    async def together(batcher: Batcher) -> list[str]:
        return [(await handle.result()).text for handle in batcher.submit_all(requests)]

    def idle(batcher: Batcher) -> Batcher:
        """``batcher`` once its worker is done with the batch whose answers came (it keeps the rows'
        caches after their last token is sent)."""
        deadline = time.monotonic() + 30
        while batcher._running and time.monotonic() < deadline:
            time.sleep(0.005)
        return batcher

    assert ServeSettings().prefix_cache_tokens == 16  # the server's default: on
    for bad in (-1, 1.5, True):
        with pytest.raises(RepotuneError, match="--prefix-cache-tokens"):
            ServeSettings(prefix_cache_tokens=bad)
    model = loaded.loaded.model
    plain = Batcher(model, tokenizer, batch_wait_ms=0, prefix_cache_tokens=0)
    cached = Batcher(model, tokenizer, batch_wait_ms=0, prefix_cache_tokens=16)
    padded = Batcher(model, tokenizer, batch_wait_ms=0, prefix_cache_tokens=0)
    padded.prefill_alone = False  # as on a GPU: a batch is read whole, left-padded
    try:
        whole = asyncio.run(one_by_one(plain))
        assert plain.prefix_cache is None and len(set(whole)) > 1
        assert asyncio.run(one_by_one(cached)) == whole
        shared = [shared_prefix(prompts[0], prompts[1]), shared_prefix(prompts[2], prompts[3])]
        assert min(shared) > len(prompts[1]) // 2 and shared_prefix(prompts[1], prompts[2]) < 16
        assert (cached.prefix_cache.hits, cached.prefix_cache.reused_tokens) == (2, sum(shared))

        assert asyncio.run(together(padded)) == whole and padded.largest_batch == len(prompts)
        # four prompts of about one length, none kept: a pass each would cost more than the padding;
        # generate reads them together into an empty cache with room for them and the tokens to come
        assert not plain._cheaper_alone(prompts)
        empty, reused = plain._start_cache(prompts, 12)
        assert reused == [0] * 4 and empty.get_seq_length() == 0
        assert all(layer.room == max(map(len, prompts)) + 12 for layer in empty.layers)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(batching, "PASS_TOKENS", 0)  # passes for free: each row is read alone
            assert plain._cheaper_alone(prompts)
            assert asyncio.run(together(plain)) == whole and plain.largest_batch == len(prompts)
        assert idle(cached)._cheaper_alone(prompts)  # mostly kept: each row reads only what is new
        assert asyncio.run(together(cached)) == whole and cached.largest_batch == len(prompts)
        # one sequence of each file was kept (the one of its last request, which took the first's):
        # it serves the first row of that file in the batch (all of it but its last token at most)
        again = [min(shared[0], len(prompts[0]) - 1), min(shared[1], len(prompts[2]) - 1)]
        assert (cached.prefix_cache.hits, cached.prefix_cache.reused_tokens) == (4, sum(shared) + sum(again))

        # a batch read together, left-padded, with the cache on: each row's part is kept all the same
        fresh = Batcher(model, tokenizer, batch_wait_ms=0, prefix_cache_tokens=16)
        try:
            assert not fresh._cheaper_alone(prompts)
            assert asyncio.run(together(fresh)) == whole
            assert len(idle(fresh).prefix_cache) == len(prompts)
            assert asyncio.run(one_by_one(fresh)) == whole and fresh.prefix_cache.hits == len(prompts)
        finally:
            fresh.stop()
    finally:
        for batcher in (plain, cached, padded):
            batcher.stop()


def test_prompts_scored_together_are_not_read_again_on_any_device(loaded: RepotuneModel) -> None:
    """A batch of log-likelihood requests (``echo`` + ``logprobs``: lm-evaluation-harness's, several
    prompts a request): the pass that scores the prompts keeps each one, so that generate reads only
    its last token, whether rows are read alone (a CPU) or together (a GPU); the answers and scores
    are those of a batcher that reads each prompt again."""
    tokenizer = loaded.tokenizer
    body = "".join(f"def f{n}(a, b):\n    return a + b * {n}\n" for n in range(6))
    prompts = [encode_prompt(tokenizer, head + body) for head in ("import os\n", "x = 1\n" * 3, "")]
    assert len({len(ids) for ids in prompts}) == 3 and min(map(len, prompts)) > 16  # right-padded; kept
    requests = [
        GenerationRequest(ids, 2, SamplingParams(0.0), logprobs=1, prompt_logprobs=True) for ids in prompts
    ]

    async def together(batcher: Batcher) -> list[Completed]:
        return [await handle.result() for handle in batcher.submit_all(requests)]

    model = loaded.loaded.model
    again = Batcher(model, tokenizer, batch_wait_ms=0, prefix_cache_tokens=0)
    try:
        reference = asyncio.run(together(again))
        assert [done.cached_tokens for done in reference] == [0, 0, 0]
        for alone in (True, False):  # False: as on a GPU, a batch not kept is read whole, left-padded
            batcher = Batcher(model, tokenizer, batch_wait_ms=0, prefix_cache_tokens=16)
            batcher.prefill_alone = alone
            try:
                done = asyncio.run(together(batcher))
                assert batcher.largest_batch == len(prompts)
                assert [d.cached_tokens for d in done] == [len(ids) - 1 for ids in prompts]
                for mine, theirs in zip(done, reference, strict=True):
                    assert mine.text == theirs.text
                    got = [t.logprob for t in mine.prompt_logprobs + mine.logprobs]
                    expected = [t.logprob for t in theirs.prompt_logprobs + theirs.logprobs]
                    assert got[0] is None and got[1:] == pytest.approx(expected[1:], abs=1e-4)
            finally:
                batcher.stop()
    finally:
        again.stop()


def test_a_stopping_server_finishes_rows_that_gave_way(loaded: RepotuneModel) -> None:
    """``stop`` lets the running batch finish: rows waiting for their next turn belong to it."""
    tokenizer = loaded.tokenizer
    batcher = Batcher(loaded.loaded.model, tokenizer, max_batch_size=1, batch_wait_ms=0, turn_tokens=4)
    ids = encode_prompt(tokenizer, "def add(a, b):")
    requests = [GenerationRequest(ids, 24, SamplingParams(0.0), stop=()) for _ in range(2)]

    async def run() -> list:
        handles = [batcher.submit(r) for r in requests]
        results = [asyncio.create_task(handle.result()) for handle in handles]
        while batcher.turns_given < 2:  # both started, and each has given way once
            await asyncio.sleep(0.005)
        await asyncio.to_thread(batcher.stop, 30.0)
        return [await result for result in results]

    try:
        done = asyncio.run(run())
    finally:
        batcher.stop()
    assert [r.completion_tokens for r in done] == [24, 24]
    assert done[0].text == done[1].text


def test_a_full_queue_and_a_timeout_are_refused(loaded: RepotuneModel) -> None:
    tokenizer = loaded.tokenizer
    batcher = Batcher(loaded.loaded.model, tokenizer, max_batch_size=8, max_queue=1, batch_wait_ms=300)
    ids = encode_prompt(tokenizer, "x")

    async def overfill() -> None:
        first = batcher.submit(GenerationRequest(ids, 2))
        with pytest.raises(QueueFull) as full:
            batcher.submit(GenerationRequest(ids, 2))
        assert full.value.status == 429 and full.value.headers() == {"Retry-After": "1"}
        await first.result()
        late = batcher.submit(GenerationRequest(ids, 2, timeout_s=0.01))  # expires in the 300 ms window
        with pytest.raises(Timeout) as timed_out:
            await late.result()
        assert timed_out.value.status == 504

    try:
        asyncio.run(overfill())
    finally:
        batcher.stop()


def test_a_stopping_server_fails_running_and_waiting_requests_at_once(loaded: RepotuneModel) -> None:
    """What the server does as its grace period ends: a stream that is generating and one still queued
    both end in an error (which a client sees as a 503 or a stream's error event), not a cut connection."""
    from repotune.serving.errors import Unavailable

    tokenizer = loaded.tokenizer
    batcher = Batcher(loaded.loaded.model, tokenizer, max_batch_size=1, max_queue=4, batch_wait_ms=0)
    ids = encode_prompt(tokenizer, "def add(a, b):")
    long = loaded.context - len(ids) - 1  # far more than it writes before the cut

    async def stopped_midway() -> tuple[int, list[BaseException]]:
        running = batcher.submit(GenerationRequest(ids, long, SamplingParams(0.0), stop=()))
        waiting = batcher.submit(GenerationRequest(ids, long, SamplingParams(0.0), stop=()))
        pieces, errors = 0, []
        try:
            async for item in running.stream():
                pieces += isinstance(item, str)
                if pieces == 1:
                    batcher.cut("the server is stopping")
        except Unavailable as err:
            errors.append(err)
        try:
            await waiting.result()
        except Unavailable as err:
            errors.append(err)
        return pieces, errors

    try:
        pieces, errors = asyncio.run(stopped_midway())
        assert [(e.status, e.message) for e in errors] == [(503, "the server is stopping")] * 2
        assert pieces < long // 2  # the running row stopped at the cut, not at its max_tokens

        async def another() -> None:
            batcher.submit(GenerationRequest(ids, 2))

        with pytest.raises(Unavailable):  # and nothing new is taken
            asyncio.run(another())
    finally:
        batcher.stop()


@pytest.mark.integration
def test_requests_are_logged_and_sigterm_stops_the_server(tiny: Path, tmp_path: Path) -> None:
    """Each OpenAI request leaves one line in the server's log: the answer's id (what the client got),
    its token counts, how it finished, its time, and the ingress's X-Request-Id, whole answers and
    streams alike. Kubernetes stops a pod with SIGTERM: the server shuts down gracefully and says so
    (uvicorn raises the signal again after its shutdown, which the default handler would turn into a
    silent kill)."""
    log = tmp_path / "serve.log"
    running = start_background(tiny, log_path=log, max_tokens=MAX_TOKENS)
    try:
        client = openai.OpenAI(base_url=running.openai_url, api_key="unused", max_retries=0, timeout=60)
        whole = client.completions.create(
            model=running.model_name, prompt="def add(a, b):", max_tokens=5, temperature=0,
            extra_headers={"X-Request-Id": "req-7c1e"},
        )  # fmt: skip
        stream = client.chat.completions.create(
            model=running.model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            temperature=0, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
        # Refusals leave their line too: the status and reason the client got, and the request's id.
        with httpx.Client(base_url=running.openai_url, timeout=60) as http:
            over = {"model": running.model_name, "prompt": "x", "max_tokens": MAX_TOKENS + 1}
            nope = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
            refused = [
                http.post("/completions", json=over, headers={"X-Request-Id": "r-400"}),
                http.post("/chat/completions", json=nope, headers={"X-Request-Id": "r-404"}),
                http.get("/completions", headers={"X-Request-Id": "r-405"}),
            ]
        assert [answer.status_code for answer in refused] == [400, 404, 405]
    finally:
        running.stop()
    text = log.read_text()
    assert "stopped serving" in text and running.process.returncode == 130, text[-2000:]
    counts = whole.usage
    line = next(x for x in text.splitlines() if whole.id in x)
    assert (
        f"{whole.id}: {counts.prompt_tokens} prompt + {counts.completion_tokens} completion tokens "
        f"({whole.choices[0].finish_reason}) in " in line
    )
    assert re.search(r" in \d+\.\d\d s, x-request-id req-7c1e$", line), line
    streamed = chunks[-1].usage
    line = next(x for x in text.splitlines() if chunks[0].id in x)
    assert f"{streamed.prompt_tokens} prompt + {streamed.completion_tokens} completion tokens" in line
    assert "x-request-id" not in line
    refusals = {
        x.rsplit(" ", 1)[-1]: x for x in text.splitlines() if "kserve.trace.requests" in x and "refused" in x
    }
    assert sorted(refusals) == ["r-400", "r-404", "r-405"], text[-3000:]
    assert refusals["r-400"].endswith(
        f"/openai/v1/completions: refused (400 max_tokens is {MAX_TOKENS + 1}, more than this server's cap "
        f"of {MAX_TOKENS} tokens), x-request-id r-400"
    )
    assert "/openai/v1/chat/completions: refused (404 the model 'nope' does not exist" in refusals["r-404"]
    assert (
        "/openai/v1/completions: refused (405 /openai/v1/completions takes POST, not GET)"
        in refusals["r-405"]
    )


@pytest.mark.integration
def test_a_client_that_goes_away_stops_its_whole_answer(tiny: Path, tmp_path: Path) -> None:
    """A whole (not streamed) answer stops generating when its client leaves. The openai client retries
    a request that timed out twice: one slow request was generated three times over, each to its last
    token, and the log said each finished. Greedy and without penalties, the tiny model writes one token
    over and over and never ends, so each try would run to ``max_tokens``."""
    long = 1000  # the tiny model's context is 1024 tokens
    log = tmp_path / "serve.log"
    with start_background(tiny, log_path=log, max_tokens=long) as running:

        def generated() -> float:
            return _metric(httpx.get(f"{running.url}/metrics").text, "repotune_generated_tokens_total")

        before = generated()
        impatient = openai.OpenAI(base_url=running.openai_url, api_key="unused", max_retries=2, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(
                model=running.model_name, prompt="x", max_tokens=long, temperature=0, frequency_penalty=0,
                extra_headers={"X-Request-Id": "gone-1"},
            )  # fmt: skip
        instance = {"prompt": "x", "max_tokens": long, "frequency_penalty": 0}
        with pytest.raises(httpx.ReadTimeout):  # KServe's v1 route, the same way
            httpx.post(
                f"{running.url}/v1/models/{running.model_name}:predict",
                json={"instances": [instance]},
                timeout=0.5,
            )
        # A sampled request never joins a greedy batch: once it is answered, every row before it has ended.
        probe = openai.OpenAI(base_url=running.openai_url, api_key="unused", max_retries=0, timeout=300)
        probe.completions.create(model=running.model_name, prompt="x", max_tokens=1, temperature=1)
        spent = generated() - before
    lines = [line for line in log.read_text().splitlines() if line.endswith("x-request-id gone-1")]
    assert len(lines) == 3 and all("cut short (the client went away)" in line for line in lines), lines
    assert spent < 4 * long, f"{spent:g} tokens generated for 4 requests whose clients left"


def test_usage_counts_a_prompts_cached_tokens_once_however_many_choices_it_has() -> None:
    from repotune.serving.batching import Completed
    from repotune.serving.model import usage

    # two prompts (10 and 7 tokens), two choices each: of the first's rows one found it kept (9 tokens)
    done = [Completed("a", "stop", 10, 2, 9), Completed("b", "stop", 10, 2, 0)]
    done += [Completed("c", "stop", 7, 1, 3), Completed("d", "length", 7, 4, 3)]
    counted = usage(done, 17, 2)
    assert (counted.prompt_tokens, counted.completion_tokens, counted.total_tokens) == (17, 9, 26)
    assert counted.prompt_tokens_details.cached_tokens == 9 + 3
    assert usage(done, 17, 1).prompt_tokens_details.cached_tokens == 15  # four prompts of one choice
    assert usage([], 5, 0).prompt_tokens_details.cached_tokens == 0


def test_a_request_line_says_how_each_answer_ended() -> None:
    """The request log's line for choices that finished, mixed, and for answers cut short by the
    server (a timeout, a stop) or by the client going away."""
    from repotune.serving.batching import Completed
    from repotune.serving.model import REQUEST_ID, Served

    served = Served("cmpl-1", 40, 0.0, retrieved=3)
    served.done = [Completed("a", "stop", 40, 3), Completed("b", "length", 40, 16)]
    served.done.append(Completed("c", "length", 40, 16))
    assert served.line(None, 1.234) == (
        "cmpl-1: 40 prompt + 35 completion tokens (3 choices: 2 length, 1 stop) in 1.23 s, 3 retrieved chunks"
    )
    token = REQUEST_ID.set("r-9")
    try:
        cut = Served("chatcmpl-2", 7, 0.0)
    finally:
        REQUEST_ID.reset(token)
    assert cut.line(Timeout(30), 30.0) == (
        "chatcmpl-2: 7 prompt tokens, cut short (504 the request did not finish within the server's "
        "timeout of 30 s) after 30.00 s, x-request-id r-9"
    )
    assert "cut short (the client went away) after 0.50 s" in cut.line(asyncio.CancelledError(), 0.5)
    assert "cut short (RuntimeError)" in cut.line(RuntimeError("boom"), 0.5)
    # An error that cut an answer short has had its line: the route does not write another as a refusal.
    with pytest.raises(Timeout) as timed_out, Served("cmpl-3", 7, 0.0):
        raise Timeout(30)
    assert timed_out.value.logged and not Timeout(30).logged


def test_request_checks(loaded: RepotuneModel) -> None:
    ids = encode_prompt(loaded.tokenizer, "x")
    assert loaded.request(ids, max_tokens=None, default_max_tokens=16).max_new_tokens == 16
    assert loaded.request(ids, max_tokens=None).max_new_tokens == MAX_TOKENS  # chat: up to the cap
    for bad in (0, -1, MAX_TOKENS + 1, 2.5, True, "3"):
        with pytest.raises(ServingError) as err:
            loaded.request(ids, max_tokens=bad)
        assert err.value.status == 400 and err.value.param == "max_tokens"
    with pytest.raises(ServingError, match="context length") as err:
        loaded.request(list(range(loaded.context)), max_tokens=1)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(ServingError, match="context length"):
        loaded.request(list(range(loaded.context - 2)), max_tokens=3)


def test_a_gap_is_answered_from_its_prefix_where_fim_prompts_are_off(tmp_path: Path) -> None:
    """A request with a suffix becomes a FIM prompt only where the model has FIM tokens and is served with
    them (``--fim on|auto``); otherwise it is answered from the code before the cursor, to the end of its
    line, and an editor's own ``<fim_prefix>…<fim_suffix>…<fim_middle>`` prompt is read the same way."""
    from repotune.serving.model import line_stops

    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"

    def gap(model: RepotuneModel, text: str, after: str | None = suffix, path: str | None = None):
        return model.text_prompt(text, after, path, retrieval=False, max_tokens=4, default_max_tokens=None)

    plain = RepotuneModel("plain", make_serving_model(tmp_path / "plain", fim=False))
    plain.load()
    with_tokens = make_serving_model(tmp_path / "fim")
    served = {f: RepotuneModel("fim", with_tokens, settings=ServeSettings(fim=f)) for f in (None, False)}
    for model in served.values():
        model.load()
    try:
        alone = gap(plain, prefix, None)
        assert not alone.line and alone.heal == " "  # no suffix: a plain prompt, no line stop
        for model in (plain, served[False]):
            assert not model.fim_prompts
            answered = gap(model, prefix)
            assert answered.ids == encode_prompt(model.tokenizer, prefix.rstrip()) and answered.line
            assert answered.heal == " "
            assert line_stops(("def",), answered) == ("def", "\n")
        written = fim_prompt(prefix, suffix, tokenizer=served[False].tokenizer)
        assert gap(served[False], written, None) == gap(served[False], prefix)
        # With the file's path, the prefix is framed as the evaluate stage scored it (its header first),
        # whether the request had a suffix or not.
        tokenizer = served[False].tokenizer
        framed = code_prompt(prefix, path="src/calc.py", tokenizer=tokenizer).rstrip()
        for after in (suffix, None):
            pathed = gap(served[False], prefix, after, "src/calc.py")
            assert pathed.ids == encode_prompt(tokenizer, framed) and pathed.heal == " "
        assert gap(served[False], "<fim_prefix>half a template", None).line is False
        auto = served[None]
        assert auto.fim_prompts and auto.fim
        as_fim = gap(auto, prefix)
        assert not as_fim.line and as_fim.heal == ""
        expected = fim_prompt(prefix, suffix, tokenizer=auto.tokenizer)
        assert as_fim.ids == encode_prompt(auto.tokenizer, expected)
        assert line_stops(("def",), as_fim) == ("def",)
        # A sentinel's name written in the code is read as text: each sentinel is in the prompt once.
        sentinels = [auto.tokenizer.convert_tokens_to_ids(token) for token in FIM_TOKENS]
        written_out = 'TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")\n' + prefix
        for after in (suffix, f'{suffix}END = "<fim_middle>"\n'):
            ids = gap(auto, written_out, after, "src/calc.py").ids
            assert sorted(i for i in ids if i in sentinels) == sorted(sentinels)
        # A model with FIM tokens of its own fills with them, whichever family an editor's template used.
        qwen = RepotuneModel("qwen", make_serving_model(tmp_path / "qwen", fim="qwen"))
        qwen.load()
        try:
            own = gap(qwen, prefix)
            assert qwen.fim_prompts and not own.line
            assert own.ids == encode_prompt(
                qwen.tokenizer, f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
            )
            assert gap(qwen, fim_prompt(prefix, suffix), None) == own  # Continue's default template
        finally:
            qwen.stop()
        with pytest.raises(RepotuneError, match=r"--fim on: .* has no fill-in-the-middle tokens"):
            RepotuneModel("plain", tmp_path / "plain", settings=ServeSettings(fim=True)).load()
    finally:
        plain.stop()
        for model in served.values():
            model.stop()


def test_a_lora_adapter_is_merged_into_its_base(tiny: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = peft_model.merge_and_unload()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = expected(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
        with_adapter = load_model(tiny, adapter=tmp_path / "adapter", device="cpu")
        adapter_only = load_model(tmp_path / "adapter", device="cpu")  # its config names the base folder
        for loaded_model in (with_adapter, adapter_only):
            got = loaded_model.model(ids).logits
            assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)  # the adapter changed the model
    with pytest.raises(RepotuneError, match="neither a model"):
        load_model(tmp_path, device="cpu")


@pytest.mark.integration
def test_a_model_is_served_from_s3(tiny: Path) -> None:
    from tests.s3_server import running_s3_server, s3_environment

    from repotune.storage import client_from_env, upload_dir

    with running_s3_server() as endpoint, s3_environment(endpoint):
        client_from_env().make_bucket("models")
        upload_dir(tiny, "s3://models/runs/tiny")
        model = RepotuneModel("tiny", "s3://models/runs/tiny")
        model.load()
        try:
            copy = model.loaded.folder
            assert (copy / "config.json").is_file() and model.fim
            assert asyncio.run(model.complete({"prompt": "x", "max_tokens": 2})).completion_tokens >= 1
        finally:
            model.stop()
        assert not copy.exists()  # the temporary copy goes with the model


@pytest.mark.integration
def test_the_command_line_names_a_missing_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "repotune", "serve", str(tmp_path / "missing"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "missing" in proc.stderr and "Traceback" not in proc.stderr


SECRET_WORDS = re.compile(r"Traceback|RecursionError|TypeError|ValueError|KeyError|AttributeError|Overflow")


def _deep(depth: int) -> bytes:
    return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.integration
def test_hostile_requests_get_4xx_and_leave_nothing_queued(server) -> None:
    name = server.model_name
    ok = {"model": name, "prompt": "x", "max_tokens": 2}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # 300 instances in one v1 request: refused whole, nothing queued, the next client is served.
        many = http.post(f"/v1/models/{name}:predict", json={"instances": [{"prompt": "x"}] * 300})
        assert many.status_code == 400 and "at most" in many.json()["error"], many.text
        assert http.post("/openai/v1/completions", json=ok).status_code == 200
        assert _metric(http.get("/metrics").text, "repotune_queued_requests") == 0
        # Values out of range on every route, streaming or not: a 400 before anything starts.
        chat = {"model": name, "messages": [{"role": "user", "content": "x"}]}
        for route, body in [
            ("/openai/v1/completions", {**ok, "seed": 2**64, "temperature": 0.7}),
            ("/openai/v1/completions", {**ok, "seed": 2**64, "temperature": 0.7, "stream": True}),
            ("/openai/v1/chat/completions", {**chat, "seed": 2**64, "temperature": 0.7, "stream": True}),
            (
                f"/v1/models/{name}:predict",
                {"instances": [{"prompt": "x", "seed": 2**64, "temperature": 0.7}]},
            ),
            (f"/v1/models/{name}:predict", {"instances": [{"prompt": "x", "stop": 5}]}),
            (f"/v1/models/{name}:predict", {"instances": [{"prompt": "x", "temperature": 50}]}),
            (f"/v1/models/{name}:predict", {"instances": [{"prompt": "x", "top_p": 0}]}),
        ]:
            response = http.post(route, json=body)
            assert response.status_code == 400, (route, body, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert not SECRET_WORDS.search(response.text), response.text
        # JSON nested 5000 deep: a 400 with an OpenAI-style body, on every route, naming no exception.
        for route in ("/openai/v1/completions", "/openai/v1/chat/completions", f"/v1/models/{name}:predict",
                      f"/v2/models/{name}/infer"):  # fmt: skip
            response = http.post(route, content=_deep(5000), headers={"content-type": "application/json"})
            assert response.status_code == 400, (route, response.text)
            assert response.json()["error"]["code"] == "json_too_deep"
            assert not SECRET_WORDS.search(response.text)
        # A server of one model has no repository: nobody can unload it over HTTP.
        assert http.post(f"/v2/repository/models/{name}/unload").status_code == 404
        assert http.get("/v2/health/ready").json() == {"ready": True}
        # The typed requests are in the OpenAPI document.
        spec = http.get("/openapi.json").json()
        schema = spec["paths"]["/openai/v1/completions"]["post"]["requestBody"]["content"]["application/json"]
        assert {"prompt", "suffix", "stop", "seed"} <= set(schema["schema"]["properties"])


@pytest.mark.integration
def test_a_taken_port_or_an_open_address_fails_before_the_model_loads(tiny: Path) -> None:
    import socket

    command = [sys.executable, "-m", "repotune", "serve", str(tiny)]
    env = {k: v for k, v in __import__("os").environ.items() if k != "REPOTUNE_SERVE_TOKENS"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*command, "--port", str(port)], capture_output=True, text=True, timeout=120, env=env
        )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: port {port} on 127.0.0.1 is in use", proc.stderr
    exposed = subprocess.run([*command, "--host", "0.0.0.0", "--port", str(port)], capture_output=True,
                             text=True, timeout=120, env=env)  # fmt: skip
    assert exposed.returncode == 2 and "loading" not in exposed.stderr
    assert exposed.stderr.startswith("error: --host 0.0.0.0") and "REPOTUNE_SERVE_TOKENS" in exposed.stderr
    assert len(exposed.stderr.strip().splitlines()) == 1


def _json_values():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()  # NaN and infinities included: Python's json writes and reads them
        | st.text(max_size=40)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=16,
    )


def _raw_bodies(name: str):
    """Bodies for the POST routes: OpenAI and KServe fields with random or plausible values, random JSON,
    deep nesting, huge numbers and strings, and bytes that are not JSON."""
    from hypothesis import strategies as st

    anything = _json_values()
    small = st.integers(1, 6)
    fields = {
        "model": st.just(name) | anything,
        "prompt": st.text(max_size=30) | st.lists(st.text(max_size=8), max_size=3) | anything,
        "suffix": st.text(max_size=20) | anything,
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant", "tool"]) | anything,
                    "content": st.text(max_size=20) | anything,
                }
            ),
            max_size=3,
        )
        | anything,
        "max_tokens": small | anything,
        "max_completion_tokens": small | anything,
        "temperature": st.floats(-1, 3) | anything,
        "top_p": st.floats(-0.5, 1.5) | anything,
        "seed": st.integers(-(2**66), 2**66) | anything,
        "n": small | anything,
        "stop": st.lists(st.text(max_size=6), max_size=20) | anything,
        "stream": st.booleans() | anything,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | anything,
        "echo": st.booleans() | anything,
        "logprobs": anything,
        "best_of": anything,
        "file_path": st.text(max_size=20) | anything,
    }
    openai_like = st.fixed_dictionaries({}, optional=fields)
    options = {key: value for key, value in fields.items() if key != "prompt"}
    instance = st.text(max_size=10) | st.fixed_dictionaries(
        {"prompt": st.text(max_size=10)}, optional=options
    )
    instances = st.fixed_dictionaries({"instances": st.lists(instance, max_size=4) | anything})
    tensor = st.fixed_dictionaries(
        {"name": st.text(max_size=5), "shape": st.lists(st.integers(-(2**40), 2**40), max_size=2),
         "datatype": st.sampled_from(["BYTES", "FP32", "INT64"]) | st.text(max_size=5),
         "data": st.lists(st.text(max_size=10) | anything, max_size=3)},
    )  # fmt: skip
    v2 = st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=2) | anything}, optional={"parameters": openai_like}
    )
    encoded = st.one_of(openai_like, instances, v2, anything).map(lambda body: json.dumps(body).encode())
    nested = st.integers(1, 6000).map(lambda depth: b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}")
    huge = st.sampled_from([
        b'{"model": "M", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",  # past int()'s 4300 digits
        b'{"model": "M", "prompt": "' + b"word " * 150_000 + b'"}',
        b'{"model": "M", "prompt": "x", "seed": 1e400}',
        b'{"instances": [' + b'"x", ' * 100_000 + b'"x"]}',
    ]).map(lambda body: body.replace(b'"M"', json.dumps(name).encode()))  # fmt: skip
    return st.one_of(encoded, nested, huge, st.binary(max_size=64))


@pytest.mark.integration
def test_random_requests_get_no_server_error(server) -> None:
    """A bounded random-request run: schemathesis cases (valid and invalid) for every operation of the
    server's /openapi.json, then hypothesis bodies (random JSON, OpenAI and KServe fields with random
    values, deep nesting, huge numbers and strings, non-JSON bytes) on the POST routes. No answer may be
    a 5xx or name an exception. The tally is printed (``pytest -s``)."""
    import schemathesis
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    name = server.model_name
    tally = {"requests": 0, "5xx": 0}
    failures: list[str] = []
    quick = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)

    def record(what: str, status: int, text: str) -> None:
        tally["requests"] += 1
        if status >= 500 or SECRET_WORDS.search(text):
            tally["5xx"] += status >= 500
            failures.append(f"{what} -> {status} {text[:200]}")

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    for operation in [result.ok() for result in schema.get_all_operations()]:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @quick
            def check(case: schemathesis.Case) -> None:
                if case.path_parameters and "model_name" in case.path_parameters:
                    case.path_parameters["model_name"] = name
                if isinstance(case.body, dict) and "model" in case.body:
                    case.body["model"] = name
                response = case.call(timeout=60)
                record(f"{case.method} {case.formatted_path}", response.status_code, response.text)

            with contextlib.suppress(Unsatisfiable):  # no invalid input for an operation without inputs
                check()
    routes = ["/openai/v1/completions", "/openai/v1/chat/completions", f"/v1/models/{name}:predict",
              f"/v2/models/{name}/infer"]  # fmt: skip

    tiny_temperature = json.dumps({"model": name, "prompt": "x", "temperature": 1e-300}).encode()

    with httpx.Client(base_url=server.url, timeout=60) as http:

        @given(route=st.sampled_from(routes), body=_raw_bodies(name), json_type=st.booleans())
        # Bodies that gave a 5xx before (hypothesis may not draw them in a short run): always sent.
        @example(route=routes[0], body=_deep(5000), json_type=True)
        @example(route=routes[3], body=b'{"inputs": NaN}', json_type=True)
        @example(route=routes[3], body=b'{"model": "M", "prompt": "x", "seed": 1e400}', json_type=True)
        @example(route=routes[2], body=b'{"instances": [{"prompt": "x", "stop": 5}]}', json_type=True)
        @example(route=routes[0], body=tiny_temperature, json_type=True)
        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def post(route: str, body: bytes, json_type: bool) -> None:
            headers = {"content-type": "application/json"} if json_type else {}
            try:
                response = http.post(route, content=body, headers=headers)
            except httpx.TransportError as err:  # a dropped connection is as bad as a 5xx
                failures.append(f"POST {route} {body[:80]!r} -> {err!r}")
                return
            record(f"POST {route} {body[:80]!r}", response.status_code, response.text)

        post()
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert _metric(http.get("/metrics").text, "repotune_queued_requests") == 0
    print(f"\nrandom requests: {tally['requests']} sent, {tally['5xx']} answered 5xx")
    assert tally["requests"] >= 120
    assert not failures, "\n".join(failures[:20])


def _fed(
    row,
    texts: list[str],
    margins: list[float],
    tokenizer,
    eos: frozenset[int],
    runner: int = 7,
    probabilities: list[float] | None = None,
) -> None:
    """Feed ``row`` the tokens of ``texts``, each text's chosen by its margin, with runner-up ``runner``
    and the probability of ``probabilities`` (1 where not given)."""
    for i, (text, margin) in enumerate(zip(texts, margins, strict=True)):
        logprob = math.log(probabilities[i]) if probabilities else 0.0
        for token in tokenizer.encode(text, add_special_tokens=False):
            row.chosen = (margin, runner, logprob)
            row.add(token, eos)


def test_a_first_line_that_copies_the_line_above_is_decoded_again_and_held_back() -> None:
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.decoding import RETRIES
    from repotune.serving.batching import Handle, _Row

    tokenizer = make_tiny_tokenizer()
    eos = frozenset({tokenizer.eos_token_id})
    loop = asyncio.new_event_loop()
    try:
        request = GenerationRequest([1, 2], 12, SamplingParams(0.0), line_above="x = 1\nreturn a\n")
        handle = Handle(request, loop)
        outcomes: list[str] = []
        row = _Row(handle, tokenizer, outcomes.append)
        # "return a" then a newline: the line above again. Nothing was streamed; the row is set back to
        # before its least certain token that writes the line (" a", margin 0.2, not the newline's 0.1),
        # with that token's runner-up in its place (here " a" again, so that the line copies again).
        # "return"'s runners-up are ends of sequence (an infinite margin): " a" is the only token to try.
        (a,) = tokenizer.encode(" a", add_special_tokens=False)
        _fed(row, ["return", " a", "\n"], [math.inf, 0.2, 0.1], tokenizer, eos, runner=a)
        assert row.rewound and not row.done and row.judging and row.sent == 0
        assert row.tokens == tokenizer.encode("return a", add_special_tokens=False)
        # Decoded again (the batcher queues it again, its tokens fed back), it copies again, and no other
        # token is left to try: the first answer stands, and it goes on from there.
        row.rewound = False
        _fed(row, ["\n"], [0.5], tokenizer, eos)
        assert row.rewound and not row.judging and outcomes == ["kept"]
        assert tokenizer.decode(row.tokens) == "return a\n"
        row.rewound = False
        _fed(row, [" b"], [1.0], tokenizer, eos)
        row.add(tokenizer.eos_token_id, eos)
        assert row.done

        # A copy decoded again that copies too is decoded again from the next least certain token, up to
        # RETRIES of them. Here each token's runner-up is the token itself, so every try copies again.
        (newline,) = tokenizer.encode("\n", add_special_tokens=False)
        line = tokenizer.encode("return a b", add_special_tokens=False)
        assert len(line) > RETRIES
        copying = GenerationRequest([1], 40, SamplingParams(0.0), line_above="x\nreturn a b")
        stubborn = _Row(Handle(copying, loop), tokenizer, outcomes.append)
        for step, token in enumerate([*line, newline]):
            stubborn.chosen = (1.0 + step, token, 0.0)  # the earlier a token, the less certain
            stubborn.add(token, eos)
        starts = []
        while stubborn.judging:
            assert stubborn.rewound and stubborn.sent == 0
            starts.append(len(stubborn.tokens))
            stubborn.rewound = False
            for token in [*line[len(stubborn.tokens) :], newline]:
                stubborn.chosen = (0.5, 7, 0.0)
                stubborn.add(token, eos)
        assert starts == [1, 2, 3][:RETRIES]  # the line's first tokens, least certain first
        assert stubborn.rewound and stubborn.tokens == [*line, newline] and outcomes[-1] == "kept"
        # One whose second try writes another line: that line replaces the copy.
        second = _Row(Handle(copying, loop), tokenizer, outcomes.append)
        for step, token in enumerate([*line, newline]):
            second.chosen = (1.0 + step, token, 0.0)
            second.add(token, eos)
        second.rewound = False
        for token in [*line[1:], newline]:  # the first try copies again
            second.chosen = (0.5, 7, 0.0)
            second.add(token, eos)
        assert second.rewound and second.judging and second.tokens == line[:2]
        second.rewound = False
        _fed(second, ["rn b", "\n"], [0.5, 0.5], tokenizer, eos)  # "return b": not a copy
        assert not second.judging and not second.rewound and outcomes[-1] == "replaced"
        assert second.text == "return b\n" and second.sent == len(second.text)

        # A row set back to before the end of its held-back text must write the rest of it again (the
        # batcher gives ``HealingProcessor`` what is left of it).
        healing = GenerationRequest([1], 12, SamplingParams(0.0), heal="\n  ", line_above="x")
        held = _Row(Handle(healing, loop), tokenizer, outcomes.append)
        assert not held.healed
        _fed(held, ["\n  ", "return"], [1.0, 1.0], tokenizer, eos)
        assert held.healed
        held._set_back(tokenizer.encode("\n", add_special_tokens=False), [math.inf], [0.0], [])
        assert not held.healed and held.rewound
        begun = tokenizer.encode("\n  x", add_special_tokens=False)
        held._set_back(begun, [math.inf] * len(begun), [0.0] * len(begun), [])
        assert held.healed

        # A first line that is not a copy is streamed as soon as it is whole.
        asked = GenerationRequest([1], 12, SamplingParams(0.0), line_above="x = 1")
        other = _Row(Handle(asked, loop), tokenizer, outcomes.append)
        _fed(other, ["return", " a"], [1.0, 1.0], tokenizer, eos)
        assert other.sent == 0 and other.judging  # not whole: held back
        _fed(other, ["\n"], [1.0], tokenizer, eos)
        # Nothing decoded again: the outcomes are the three rows' above.
        assert other.sent > 0 and not other.judging and outcomes == ["kept", "kept", "replaced"]

        async def events(handle) -> list:
            return [item async for item in handle.stream()]

        pieces = loop.run_until_complete(events(handle))
        assert "".join(p for p in pieces if isinstance(p, str)) == "return a\n b" == pieces[-1].text
    finally:
        loop.close()


def test_a_completion_ends_before_its_first_line_the_model_was_unsure_of() -> None:
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.serving.batching import Handle, _Row

    tokenizer = make_tiny_tokenizer()
    eos = frozenset({tokenizer.eos_token_id})
    loop = asyncio.new_event_loop()

    async def events(handle) -> list:
        return [item async for item in handle.stream()]

    try:
        gated = GenerationRequest([1], 40, SamplingParams(0.0), min_confidence=0.5)
        handle = Handle(gated, loop)
        row = _Row(handle, tokenizer)
        _fed(row, ["return", " a"], [1.0, 1.0], tokenizer, eos, probabilities=[0.9, 0.8])
        assert row.sent == 0  # not whole: held back until judged
        _fed(row, ["\n", "\n"], [1.0, 1.0], tokenizer, eos, probabilities=[0.7, 0.01])  # a blank line passes
        assert row.sent == len("return a\n\n") and not row.done
        # " b" (one token) at 0.6 and its newline at 0.4: a geometric mean of 0.49, below 0.5.
        assert len(tokenizer.encode(" b", add_special_tokens=False)) == 1
        _fed(row, [" b", "\n"], [1.0, 1.0], tokenizer, eos, probabilities=[0.6, 0.4])
        assert row.done
        pieces = loop.run_until_complete(events(handle))
        assert "".join(p for p in pieces if isinstance(p, str)) == "return a\n\n" == pieces[-1].text
        assert pieces[-1].finish_reason == "stop"

        # The last line is judged when the row ends, without its newline; a cut there says "stop", not
        # "length".
        limit = len(tokenizer.encode("return\n b", add_special_tokens=False))  # ends at the token limit
        short = Handle(GenerationRequest([1], limit, SamplingParams(0.0), min_confidence=0.5), loop)
        ended = _Row(short, tokenizer)
        _fed(ended, ["return", "\n", " b"], [1.0] * 3, tokenizer, eos, probabilities=[0.9, 0.9, 0.3])
        pieces = loop.run_until_complete(events(short))
        assert pieces[-1].text == "return\n" and pieces[-1].finish_reason == "stop"
        # Sure enough of every line: the whole text, streamed line by line, ended as it ended.
        sure = Handle(GenerationRequest([1], limit, SamplingParams(0.0), min_confidence=0.5), loop)
        whole = _Row(sure, tokenizer)
        _fed(whole, ["return", "\n", " b"], [1.0] * 3, tokenizer, eos, probabilities=[0.9, 0.9, 0.6])
        pieces = loop.run_until_complete(events(sure))
        assert [p for p in pieces if isinstance(p, str)] == ["return\n", " b"]
        assert pieces[-1].text == "return\n b" and pieces[-1].finish_reason == "length"
    finally:
        loop.close()


@pytest.mark.integration
def test_the_server_gates_lines_on_the_confidence_evaluation_reports(loaded: RepotuneModel) -> None:
    from repotune.evaluate.generate import complete_lines
    from repotune.serving.protocol import CompletionRequest, validated

    model, tokenizer = loaded.loaded.model, loaded.tokenizer
    prompts = ["x", "def add(a, b):", "import os", "class Greeter:", "y = 2"]
    greedy = SamplingParams(0.0, line_penalty=1.0)

    async def served(prompt: str, threshold: float) -> str:
        request = GenerationRequest(encode_prompt(tokenizer, prompt), 8, greedy, min_confidence=threshold)
        handle = loaded.submit(request)
        pieces = [item async for item in handle.stream()]
        assert "".join(p for p in pieces if isinstance(p, str)) == pieces[-1].text  # nothing unsure streamed
        return pieces[-1].text

    # The tiny random model ends no line in 8 tokens: its whole answer is one line, and its confidence
    # what the evaluate stage records for it.
    scored = complete_lines(model, tokenizer, prompts, batch_size=1, max_new_tokens=8, line_penalty=1.0)
    assert all(0 < c.confidence < 1 for c in scored)
    for prompt, completion in zip(prompts, scored, strict=True):
        assert asyncio.run(served(prompt, completion.confidence * 0.999)).strip() == completion.text.strip()
        assert asyncio.run(served(prompt, min(1.0, completion.confidence * 1.001))).strip() == ""

    # The request's threshold, else the server's, for greedy completions only.
    ids = encode_prompt(tokenizer, "x")
    assert loaded.request(ids, max_tokens=4, sampling=greedy, min_confidence=0.3).min_confidence == 0.3
    assert (
        loaded.request(ids, max_tokens=4, sampling=SamplingParams(0.7), min_confidence=0.3).min_confidence
        == 0
    )
    with pytest.raises(ServingError) as refused:
        validated(CompletionRequest, {"model": "tiny", "prompt": "x", "min_confidence": 1.5})
    assert refused.value.status == 400 and refused.value.param == "min_confidence"
    with pytest.raises(RepotuneError, match="--min-confidence must be a number from 0 to 1"):
        dataclasses.replace(loaded.settings, min_confidence=-0.1)


@pytest.mark.integration
def test_a_copied_first_line_is_served_as_evaluation_scores_it(loaded: RepotuneModel) -> None:
    from repotune.evaluate.generate import complete_lines

    model, tokenizer = loaded.loaded.model, loaded.tokenizer
    prompts = ["x", "def add(a, b):", "import os", "class Greeter:", "y = 2", "return"]
    greedy = SamplingParams(0.0, line_penalty=1.0)

    async def served(prompt: str, line_above: str = "") -> tuple[list[str], str, int]:
        request = GenerationRequest(encode_prompt(tokenizer, prompt), 8, greedy, line_above=line_above)
        handle = loaded.submit(request)
        pieces = [item async for item in handle.stream()]
        assert pieces[-1].completion_tokens == len(handle.row.tokens)
        return [p for p in pieces if isinstance(p, str)], pieces[-1].text, handle.row.generated

    def generated_tokens() -> float:
        """``repotune_generated_tokens`` once the batch that answered last has returned (it is counted
        after its rows' results are sent)."""
        deadline = time.monotonic() + 10
        while loaded.batcher._running and time.monotonic() < deadline:
            time.sleep(0.01)
        return REGISTRY.get_sample_value(
            "repotune_generated_tokens_total", {"model_name": loaded.batcher.model_name}
        )

    first = [asyncio.run(served(p))[1] for p in prompts]
    # The tiny random model ends no line in 8 tokens: its whole text is its first line. Judged against
    # itself as the line above, every answer is a copy, and is decoded again.
    before, tokens_before = dict(loaded.batcher.line_above), generated_tokens()
    again = [asyncio.run(served(p, line_above=text)) for p, text in zip(prompts, first, strict=True)]
    changed = [text != old for (_, text, _), old in zip(again, first, strict=True)]
    assert all("".join(pieces) == text for pieces, text, _ in again)  # the copy was never streamed
    assert loaded.batcher.line_above["replaced"] - before["replaced"] == sum(changed) >= 3
    # The tokens set back were generated too (all 8 of the copy, then those after the token decoded
    # again), and count on /metrics.
    assert all(generated > 8 for (_, _, generated), retried in zip(again, changed, strict=True) if retried)
    assert generated_tokens() - tokens_before == sum(generated for _, _, generated in again)
    # The evaluate stage, asked the same with the same line above, scores the same answers.
    scored = complete_lines(model, tokenizer, prompts, batch_size=1, max_new_tokens=8, line_penalty=1.0,
                            befores=first)  # fmt: skip
    assert [c.text for c in scored] == [text for _, text, _ in again]
    assert [c.retried for c in scored] == changed
    # "return"'s copy decoded again from its least certain token copies again (or is blank): it is the
    # next least certain token's try that replaces it, in both.
    once = complete_lines(model, tokenizer, prompts, batch_size=1, max_new_tokens=8, line_penalty=1.0,
                          befores=first, retries=1)  # fmt: skip
    assert [c.retried for c in once] == [*changed[:-1], False] and changed[-1]

    # Completions judge against the code before the cursor (a FIM prompt's prefix), greedy ones only,
    # unless the server is told not to.
    prompt = loaded.text_prompt(
        "a = 1\nb = ", "\nc = 3\n", None, retrieval=False, max_tokens=4, default_max_tokens=4
    )
    assert prompt.before == "a = 1\nb = "
    written = loaded.text_prompt("<fim_prefix>a = 1\n<fim_suffix>c = 3\n<fim_middle>", None, None,
                                 retrieval=False, max_tokens=4, default_max_tokens=4)  # fmt: skip
    assert written.before == "a = 1\n"
    assert loaded.request(prompt.ids, max_tokens=4, sampling=greedy, before="a = 1\n").line_above == "a = 1\n"
    assert loaded.request(prompt.ids, max_tokens=4, sampling=SamplingParams(0.7), before="a").line_above == ""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loaded, "settings", dataclasses.replace(loaded.settings, retry_line_above=False))
        assert loaded.request(prompt.ids, max_tokens=4, sampling=greedy, before="a = 1\n").line_above == ""


@pytest.mark.integration
def test_a_file_header_is_never_written_served_or_scored(loaded: RepotuneModel, tmp_path: Path) -> None:
    from repotune.data.transforms import FILENAME_TOKEN, banned_token_ids
    from repotune.decoding import stop_token_ids
    from repotune.evaluate.generate import complete_lines, greedy_lines, prompt_ids

    assert banned_token_ids(loaded.tokenizer) == frozenset()  # no <filename> token: nothing banned
    served_model = RepotuneModel(
        "header", make_serving_model(tmp_path / "header", header=True), settings=loaded.settings
    )
    served_model.load()
    model, tokenizer = served_model.loaded.model, served_model.tokenizer
    header = tokenizer.convert_tokens_to_ids(FILENAME_TOKEN)
    eos = sorted(stop_token_ids(model, tokenizer))
    # Evaluation stops where the server does: at the chat template's <|im_end|> too, which this tiny
    # model's generation config does not name.
    assert set(eos) == served_model.batcher.eos_ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert model.generation_config.eos_token_id != tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert banned_token_ids(tokenizer) == {header} and header not in eos
    prompts = ["def add(a, b):", "import os", "x = 1\n"]

    def preferring(token: int) -> Any:
        """A model that would rather write ``token`` than anything else, as a small model given
        <filename> blocks of context now and then starts a file header instead of the line."""

        def prefer(_module: Any, _inputs: Any, output: Any) -> None:
            output.logits[..., token] += 100.0

        return model.register_forward_hook(prefer)

    async def served(request: GenerationRequest) -> tuple[str, list[int]]:
        handle = served_model.submit(request)
        return (await handle.result()).text, list(handle.row.tokens)

    greedy = SamplingParams(0.0, line_penalty=1.0)
    hook = preferring(header)
    try:
        free = greedy_lines(
            model, [prompt_ids(p, tokenizer, 2048)[0] for p in prompts], max_new_tokens=6, eos=eos, pad=0,
            done=lambda row, tokens: False, prefill_alone=True,
        )  # fmt: skip
        assert all(row.tokens == [header] * 6 for row in free)  # the preference holds where nothing is banned
        scored = complete_lines(model, tokenizer, prompts, batch_size=2, max_new_tokens=6, line_penalty=1.0)
        assert all(FILENAME_TOKEN not in c.raw for c in scored)
        answers = [
            asyncio.run(served(GenerationRequest(encode_prompt(tokenizer, p), 6, greedy))) for p in prompts
        ]
        # What is served is what is scored, and no token of it is the header, sampled or not.
        assert [text.strip() for text, _ in answers] == [c.text.strip() for c in scored]
        assert all(header not in tokens for _, tokens in answers)
        sampled = GenerationRequest(encode_prompt(tokenizer, "y"), 6, SamplingParams(1.0, seed=3))
        assert header not in asyncio.run(served(sampled))[1]
    finally:
        hook.remove()
    # The FIM sentinels stay free: a model that prefers one writes it (decoding drops it from the text).
    fim = tokenizer.convert_tokens_to_ids(FIM_TOKENS[0])
    hook = preferring(fim)
    try:
        scored = complete_lines(model, tokenizer, prompts[:1], batch_size=1, max_new_tokens=6)
        assert scored[0].raw.startswith(FIM_TOKENS[0]) and FIM_TOKENS[0] not in scored[0].text
    finally:
        hook.remove()
        served_model.stop()


def test_a_token_that_writes_part_of_a_character_is_named_by_its_bytes() -> None:
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from repotune.models import resolve_base_model
    from repotune.serving.batching import GPT2_BYTES, Handle, _Row, bytes_named

    assert {char: byte for byte, char in bytes_to_unicode().items()} == GPT2_BYTES  # transformers' own table
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("smollm2-135m"))
    loop = asyncio.new_event_loop()
    try:
        row = _Row(Handle(GenerationRequest([1], 4, logprobs=1), loop), tokenizer)
        # SmolLM2 writes the emoji in two tokens, neither a character of its own; "é" is one token.
        names = [row._spelled(token) for token in tokenizer("🙂é", add_special_tokens=False).input_ids]
    finally:
        loop.close()
    assert names == ["bytes:\\xf0\\x9f", "bytes:\\x99\\x82", "é"]
    assert (bytes_named(names[0]) + bytes_named(names[1])).decode() == "🙂" and bytes_named(
        "é"
    ) == "é".encode()
