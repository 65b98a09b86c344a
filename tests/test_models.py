"""Base models (``repotune.models``): aliases built once into a cache, local folders, s3:// prefixes, clear
errors for everything else; and what training reads of an architecture (``repotune.train.architecture``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from repotune.errors import RepotuneError
from repotune.models import make_tiny_model, resolve_base_model
from repotune.models.cache import build_once
from repotune.models.remote import S3_MANIFEST
from repotune.train.architecture import estimate_training_memory_gb, lora_target_modules, parameter_count

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(model_cache: Path) -> Path:
    return resolve_base_model("tiny", cache_dir=model_cache)


@pytest.fixture
def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config)


def test_tiny_alias_builds_once_and_reloads(tiny: Path, model_cache: Path) -> None:
    assert tiny == model_cache / "tiny-llama"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tiny.iterdir()}
    assert not list(model_cache.glob("*.partial"))

    started = time.perf_counter()
    assert resolve_base_model("tiny", cache_dir=model_cache) == tiny
    assert time.perf_counter() - started < 1.0

    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    batch = tokenizer(["def add(a, b):\n    return a + b\n"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert tokenizer.chat_template is not None  # the SmolLM2 tokenizer, with its chat template


def test_tiny_weights_are_deterministic(tiny: Path, tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    again = make_tiny_model(tmp_path / "again", tokenizer=AutoTokenizer.from_pretrained(tiny))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    first, second = load_file(tiny / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_local_folder_is_used_in_place(tiny: Path) -> None:
    assert resolve_base_model(str(tiny)) == tiny.resolve()


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RepotuneError, match=r"no config\.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(RepotuneError, match="not a folder"):
        resolve_base_model(str(tmp_path / "model.safetensors"))
    with pytest.raises(RepotuneError, match="does not exist"):
        resolve_base_model(str(tmp_path / "missing" / "deeper" / "model"))


def test_unknown_spec_lists_the_accepted_forms() -> None:
    started = time.perf_counter()
    with pytest.raises(RepotuneError, match="unknown base model 'no-such-model'") as err:
        resolve_base_model("no-such-model")
    assert time.perf_counter() - started < 1.0
    for form in ("smollm2-135m", "tiny", "s3://", "config.json", "Qwen/"):
        assert form in str(err.value)


def test_hub_id_while_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so the id cannot be read as a relative folder
    started = time.perf_counter()
    with pytest.raises(RepotuneError, match=r"repotune-tests/no-such-model.*local model folder"):
        resolve_base_model("repotune-tests/no-such-model")
    assert time.perf_counter() - started < 5.0


def test_interrupted_build_leaves_no_folder(tmp_path: Path) -> None:
    def build(dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_once(tmp_path / "model", build)
    assert not (tmp_path / "model").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def build(dest: Path) -> None:
        calls.append(1)
        time.sleep(0.2)  # long enough for the other thread to reach the lock
        (dest / "config.json").write_text("{}")

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_once(tmp_path / "m", build))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert results == [tmp_path / "m", tmp_path / "m"]


def test_lora_targets_on_llama(tiny: Path) -> None:
    assert lora_target_modules(AutoModelForCausalLM.from_pretrained(tiny)) == LLAMA_TARGETS


def test_lora_targets_on_gpt2_work_with_peft(tiny_gpt2: GPT2LMHeadModel) -> None:
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(tiny_gpt2)
    assert targets == ["c_attn", "c_proj", "c_fc"]
    peft_model = get_peft_model(tiny_gpt2, LoraConfig(r=4, target_modules=targets, fan_in_fan_out=True))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert 0 < trainable < total


def test_parameter_count_matches_the_real_model(
    tiny: Path, tiny_gpt2: GPT2LMHeadModel, tmp_path: Path
) -> None:
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny).parameters())
    assert parameter_count(tiny) == real
    tiny_gpt2.config.save_pretrained(tmp_path)
    assert parameter_count(tmp_path / "config.json") == sum(p.numel() for p in tiny_gpt2.parameters())


def test_memory_estimate_orders_methods_and_grows_with_tokens(tiny: Path) -> None:
    lora = estimate_training_memory_gb(tiny, "lora", seq_len=512, micro_batch_size=2, dtype_bytes=2)
    qlora = estimate_training_memory_gb(tiny, "qlora", seq_len=512, micro_batch_size=2, dtype_bytes=2)
    full = estimate_training_memory_gb(tiny, "full", seq_len=512, micro_batch_size=2, dtype_bytes=2)
    longer = estimate_training_memory_gb(tiny, "lora", seq_len=1024, micro_batch_size=2, dtype_bytes=2)
    checkpointed = estimate_training_memory_gb(
        tiny, "lora", seq_len=512, micro_batch_size=2, dtype_bytes=2, gradient_checkpointing=True
    )
    assert 0 < qlora < lora < full
    assert longer > lora > checkpointed
    with pytest.raises(RepotuneError, match="unknown training method"):
        estimate_training_memory_gb(tiny, "dora", seq_len=512, micro_batch_size=2, dtype_bytes=2)


@pytest.mark.slow
def test_smollm2_converts_once_and_generates(tmp_path: Path) -> None:
    started = time.perf_counter()
    folder = resolve_base_model("smollm2-135m", cache_dir=tmp_path)
    converted_s = time.perf_counter() - started
    assert folder == tmp_path / "smollm2-135m-instruct"
    assert "quantization_config" not in (folder / "config.json").read_text()

    started = time.perf_counter()
    assert resolve_base_model("smollm2-135m", cache_dir=tmp_path) == folder
    assert time.perf_counter() - started < 1.0 < converted_s

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert parameter_count(folder) == sum(p.numel() for p in model.parameters())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.integration
def test_s3_prefix_downloads_once_and_refreshes_when_objects_change(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("minio")
    from tests.s3_server import running_s3_server, s3_environment

    bucket = "repotune-base-models"
    with running_s3_server() as endpoint, s3_environment(endpoint):
        from repotune.storage import client_from_env

        client = client_from_env()
        client.make_bucket(bucket)
        for file in tiny.iterdir():
            client.fput_object(bucket, f"base/tiny/{file.name}", str(file))
        client.fput_object(bucket, "base/tiny-old/config.json", str(tiny / "config.json"))

        folder = resolve_base_model(f"s3://{bucket}/base/tiny", cache_dir=tmp_path)
        assert folder.is_relative_to(tmp_path / "s3" / bucket)
        assert {p.name for p in folder.iterdir()} == {p.name for p in tiny.iterdir()} | {S3_MANIFEST}
        assert (folder / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
        assert parameter_count(folder) == parameter_count(tiny)

        downloaded_at = (folder / "model.safetensors").stat().st_mtime_ns
        assert resolve_base_model(f"s3://{bucket}/base/tiny/", cache_dir=tmp_path) == folder
        assert (folder / "model.safetensors").stat().st_mtime_ns == downloaded_at

        (tmp_path / "README.md").write_text("a new object under the prefix\n")
        client.fput_object(bucket, "base/tiny/README.md", str(tmp_path / "README.md"))
        assert (resolve_base_model(f"s3://{bucket}/base/tiny", cache_dir=tmp_path) / "README.md").is_file()

        with pytest.raises(RepotuneError, match="no objects under"):
            resolve_base_model(f"s3://{bucket}/base/missing", cache_dir=tmp_path)
