"""Serving with the index the model folder carries: retrieved context reaches completion prompts (plain
and fill-in-the-middle) in the format training uses, within the context budget, on by the server's
setting and per request. A real `repotune serve` on 127.0.0.1 with a tiny random model: assertions are on
prompt token counts and the sources the server reports, not on what the model writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from tests.serving_helpers import make_serving_model

from repotune.data.transforms import code_prompt, fim_prompt
from repotune.errors import RepotuneError
from repotune.records import Kind, Record
from repotune.retrieval import RetrievalConfig, RetrievalIndex, build_context
from repotune.retrieval.shipped import MODEL_INDEX_DIR, add_to_model, model_index, trained_settings
from repotune.serving.model import RepotuneModel, encode_prompt
from repotune.serving.server import start_background
from repotune.serving.settings import ServeSettings

BILLING = """\
def compute_invoice_total(items, region):
    subtotal = sum(item.price_cents * item.quantity for item in items)
    tax = subtotal * tax_rate_for(region)
    return subtotal + round(tax)


def tax_rate_for(region):
    return {"eu": 0.2, "us": 0.07}.get(region, 0.0)
"""
SHIPPING = """\
def shipping_cost_cents(weight_grams, region):
    base = 500 if region == "eu" else 700
    return base + weight_grams // 100
"""
PREFIX = "from billing import compute_invoice_total\n\n\ndef checkout(cart, region):\n    total = "
SUFFIX = "\n    return total\n"
PATH = "shop/checkout.py"
MAX_TOKENS = 64


def _records() -> list[Record]:
    files = {"billing/invoice.py": BILLING, "billing/shipping.py": SHIPPING, PATH: PREFIX + SUFFIX}
    return [
        Record(content=text, kind=Kind.CODE, source="test", id=path, file_path=path, revision="abc123")
        for path, text in files.items()
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_serving_model(tmp_path_factory.mktemp("serving") / "tiny")


@pytest.fixture(scope="module")
def with_index(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with an index of a small repository in MODEL/retrieval/, as the pipeline ships it."""
    folder = tmp_path_factory.mktemp("indexed") / "model"
    shutil.copytree(tiny, folder)
    saved = folder.parent / "index"
    RetrievalIndex.build(_records(), RetrievalConfig(window_lines=4, stride_lines=2)).save(saved)
    assert add_to_model(saved, folder) == folder / MODEL_INDEX_DIR
    return folder


@pytest.fixture(scope="module")
def server(with_index: Path):
    with start_background(with_index, max_tokens=MAX_TOKENS) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0, timeout=60)


def _complete(client: openai.OpenAI, server, **body):
    extra = {key: body.pop(key) for key in ("file_path", "retrieval") if key in body}
    body.setdefault("max_tokens", 4)
    return client.completions.create(model=server.model_name, temperature=0, extra_body=extra or None, **body)


def test_the_shipped_index_is_found_beside_the_weights(with_index: Path, tiny: Path, tmp_path) -> None:
    assert model_index(with_index) == with_index / MODEL_INDEX_DIR
    assert model_index(tiny) is None
    assert add_to_model(tmp_path, tiny) is None  # not an index: nothing copied
    assert not (tiny / MODEL_INDEX_DIR).exists()
    # An adapter folder finds the index of the training output around it.
    adapter = with_index / "adapter"
    adapter.mkdir()
    try:
        (adapter / "adapter_config.json").write_text("{}")
        assert model_index(adapter) == with_index / MODEL_INDEX_DIR
    finally:
        shutil.rmtree(adapter)


def test_trained_settings_come_from_the_recipe(tmp_path: Path) -> None:
    assert trained_settings(tmp_path) == (False, None)
    summary = {"recipe": {"data": {"retrieval_rate": 0.5, "retrieval_context_tokens": 96}}}
    (tmp_path / "train_summary.json").write_text(json.dumps(summary))
    assert trained_settings(tmp_path) == (True, 96)
    summary["recipe"]["data"]["retrieval_rate"] = 0.0
    (tmp_path / "train_summary.json").write_text(json.dumps(summary))
    assert trained_settings(tmp_path) == (False, None)


@pytest.mark.integration
def test_retrieved_context_reaches_plain_and_fim_prompts_per_request(server, client, with_index) -> None:
    # No train summary says the model learned to use context: off unless a request asks.
    plain = _complete(client, server, prompt=PREFIX, file_path=PATH)
    assert "retrieval" not in (plain.model_extra or {})
    asked = _complete(client, server, prompt=PREFIX, file_path=PATH, retrieval=True)
    sources = asked.model_extra["retrieval"]
    assert len(sources) == 1 and any(s.startswith("billing/invoice.py:") for s in sources[0])
    # The indexed version of the file being completed is searched too: its lines below the cursor,
    # which a plain prompt does not show, are context; what the prompt shows is not.
    own = [s for s in sources[0] if s.startswith(f"{PATH}:")]
    assert own == [f"{PATH}:3-6"] and all(s.startswith(("billing/", f"{PATH}:")) for s in sources[0])

    # The prompt is the training transform's: context, then the file header, then the prefix (less its
    # trailing space, which the server holds back for the model to write: repotune.serving.healing).
    index = RetrievalIndex.load(with_index / MODEL_INDEX_DIR)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(with_index)
    context = build_context(index, PREFIX, tokenizer=tokenizer, path=PATH)
    assert "def compute_invoice_total(" in context
    framed = code_prompt(PREFIX, path=PATH, tokenizer=tokenizer, context=context)
    assert framed.endswith(" = ")
    expected = encode_prompt(tokenizer, framed.removesuffix(" "))
    assert asked.usage.prompt_tokens == len(expected) > plain.usage.prompt_tokens
    # Without context the file header is still there, as the evaluate stage's arms without retrieval
    # frame a line.
    alone = code_prompt(PREFIX, path=PATH, tokenizer=tokenizer).removesuffix(" ")
    assert plain.usage.prompt_tokens == len(encode_prompt(tokenizer, alone))

    fim_plain = _complete(client, server, prompt=PREFIX, suffix=SUFFIX, file_path=PATH, retrieval=False)
    fim = _complete(client, server, prompt=PREFIX, suffix=SUFFIX, file_path=PATH, retrieval=True)
    fim_context = build_context(index, PREFIX, tokenizer=tokenizer, path=PATH, suffix=SUFFIX)
    with_context = fim_prompt(PREFIX, SUFFIX, path=PATH, tokenizer=tokenizer, context=fim_context)
    without = fim_prompt(PREFIX, SUFFIX, path=PATH, tokenizer=tokenizer)
    assert fim.usage.prompt_tokens == len(encode_prompt(tokenizer, with_context))
    assert fim_plain.usage.prompt_tokens == len(encode_prompt(tokenizer, without)) < fim.usage.prompt_tokens

    # With the suffix the prompt shows all of the file as indexed: none of it is context again.
    fim_sources = fim.model_extra["retrieval"][0]
    assert fim_sources and all(not s.startswith(PATH) for s in fim_sources)


@pytest.mark.integration
def test_context_stays_within_the_window(server, client, with_index: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(with_index)
    window = 1024  # the tiny model's max_position_embeddings
    asked = 8  # max_tokens
    line = "x = 1\n"
    per_line = len(encode_prompt(tokenizer, line * 50)) / 50
    plain = _complete(client, server, prompt=PREFIX, file_path=PATH, retrieval=False, max_tokens=asked)
    full = _complete(client, server, prompt=PREFIX, file_path=PATH, retrieval=True, max_tokens=asked)
    added = full.usage.prompt_tokens - plain.usage.prompt_tokens
    assert added > 0
    # Prompts that leave the context half its room, a little, or none: less context or none, never a
    # 400, and the prompt with its context and max_tokens always fits the window.
    for left in (added // 2, 8, 0):
        lines = int((window - asked - plain.usage.prompt_tokens - left) / per_line) - 1
        answer = _complete(
            client,
            server,
            prompt=line * lines + PREFIX,
            file_path=PATH,
            retrieval=True,
            max_tokens=asked,
        )
        without = _complete(
            client,
            server,
            prompt=line * lines + PREFIX,
            file_path=PATH,
            retrieval=False,
            max_tokens=asked,
        )
        assert answer.usage.prompt_tokens + asked <= window
        assert answer.usage.prompt_tokens - without.usage.prompt_tokens < added
    assert answer.model_extra["retrieval"] == [[]]


@pytest.mark.integration
def test_odd_requests_get_no_server_error(server) -> None:
    name = server.model_name
    url = f"{server.openai_url}/completions"
    cases = [
        ({"prompt": PREFIX, "retrieval": "yes"}, 400),
        ({"prompt": PREFIX, "retrieval": 1}, 400),
        ({"prompt": [1, 2, 3], "retrieval": True}, 200),  # token ids: nothing to search with
        ({"prompt": "", "retrieval": True}, 200),  # an empty prompt starts from EOS, as OpenAI's do
        ({"prompt": "   \n\n", "retrieval": True}, 200),
        ({"prompt": ")))(((", "retrieval": True, "file_path": "../../etc/passwd"}, 200),
        ({"prompt": ["def a():", "compute_invoice_total("], "retrieval": True, "n": 2}, 200),
        ({"prompt": PREFIX, "suffix": "", "retrieval": True, "file_path": ""}, 200),
        ({"prompt": PREFIX, "retrieval": True, "max_tokens": 5000}, 400),
        ({"prompt": PREFIX, "retrieval": True, "stream": True}, 200),
    ]
    with httpx.Client(timeout=60) as http:
        for body, status in cases:
            answer = http.post(url, json={"model": name, "max_tokens": 2, **body})
            assert answer.status_code == status, (body, answer.text)
        # KServe v1 instances take the switch too.
        instance = {"prompt": PREFIX, "retrieval": True, "max_tokens": 2}
        v1 = http.post(f"{server.url}/v1/models/{name}:predict", json={"instances": [instance]})
        assert v1.status_code == 200 and len(v1.json()["predictions"]) == 1


def test_server_default_follows_the_setting_and_the_training(with_index: Path, tmp_path: Path) -> None:
    def prompt_tokens(model: RepotuneModel, retrieval: bool | None) -> tuple[int, bool]:
        prompt = model.text_prompt(PREFIX, None, PATH, retrieval=model.uses_retrieval(retrieval),
                                   max_tokens=4, default_max_tokens=None)  # fmt: skip
        return len(prompt.ids), bool(prompt.retrieved.sources)

    on = RepotuneModel("on", with_index, settings=ServeSettings(retrieval=True))
    on.load()
    try:
        assert prompt_tokens(on, None)[1] is True
        assert prompt_tokens(on, False)[1] is False
    finally:
        on.stop()
    trained = tmp_path / "trained"
    shutil.copytree(with_index, trained)
    summary = {"recipe": {"data": {"retrieval_rate": 0.3, "retrieval_context_tokens": 100}}}
    (trained / "train_summary.json").write_text(json.dumps(summary))
    auto = RepotuneModel("auto", trained, settings=ServeSettings())
    auto.load()
    try:
        assert auto.retrieval is not None and auto.retrieval.default and auto.retrieval.budget == 100
        with_context, found = prompt_tokens(auto, None)
        without, _ = prompt_tokens(auto, False)
        header = len(encode_prompt(auto.tokenizer, code_prompt("", path=PATH, tokenizer=auto.tokenizer)))
        assert found and 0 < with_context - without <= 100 + header
    finally:
        auto.stop()


def test_retrieval_without_an_index_is_refused(tiny: Path) -> None:
    model = RepotuneModel("bare", tiny, settings=ServeSettings())
    model.load()
    try:
        assert model.retrieval is None
        assert model.uses_retrieval(None) is False and model.uses_retrieval(False) is False
        with pytest.raises(Exception, match="no retrieval index") as err:
            model.uses_retrieval(True)
        assert getattr(err.value, "status", None) == 400
    finally:
        model.stop()
    with pytest.raises(RepotuneError, match="--retrieval on"):
        RepotuneModel("bare", tiny, settings=ServeSettings(retrieval=True)).load()
    # The command line refuses before the model loads, in one line.
    done = subprocess.run(
        [sys.executable, "-m", "repotune", "serve", str(tiny), "--retrieval", "on", "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "--retrieval on" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
