"""`repotune export` to a local stand-in for the Hugging Face Hub, driven through huggingface_hub itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from tests.hub_fake import HubFake, running_hub
from tests.serving_helpers import make_serving_model

from repotune.errors import RepotuneError
from repotune.export import ExportConfig, eval_results, export_model, model_card

TOKEN = "hf_test_write_token"
SHA = "3f2c1ab" + "0" * 33
ARMS = ("base", "base+retrieval", "candidate", "candidate+retrieval")


def metric(value: float, n: int = 40, ci: float | None = 0.05, higher: bool = True) -> dict:
    low, high = (None, None) if ci is None else (value - ci, value + ci)
    return {"value": value, "n": n, "ci_low": low, "ci_high": high, "higher_is_better": higher}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as `repotune train` leaves it: merged tiny model, tokenizer, LoRA adapter, summary,
    its own README, and training state that must not be published."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = make_serving_model(tmp_path_factory.mktemp("trained") / "model")
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    lora.save_pretrained(folder / "adapter")
    summary = {
        "base_model": "smollm2-135m",
        "base_model_dir": "/home/me/.cache/repotune/models/smollm2-135m-instruct",
        "method": "lora",
        "data": {"dataset.source": "github:org/myrepo", "dataset.commit": SHA, "train_records": 12},
        "steps": 4,
        "dataset_hash": "0123456789abcdef",
    }
    (folder / "train_summary.json").write_text(json.dumps(summary))
    (folder / "README.md").write_text("# repotune fine-tuned model\n")
    (folder / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(b"\x00" * 32)
    (folder / ".token-cache").mkdir()
    return folder


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """metrics.json with the four arms of an evaluation (and an arm without an interval)."""
    folder = tmp_path_factory.mktemp("evaluation")
    models = {
        arm: {
            "perplexity": metric(9.5 - i, ci=0.4, higher=False),
            "line_exact_match": metric(0.1 * (i + 1), ci=None if arm == "base" else 0.05),
        }
        for i, arm in enumerate(ARMS)
    }
    result = {
        "models": models,
        "decision": {"promote": True, "reasons": ["promote: perplexity 6.50 vs 9.50"]},
    }
    (folder / "metrics.json").write_text(json.dumps(result))
    return folder


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubFake]:
    from huggingface_hub import constants

    # The stand-in speaks git-lfs's basic transfer, not Xet (see tests/hub_fake.py).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with running_hub(TOKEN) as server:
        yield server
    assert server.unknown == [], "huggingface_hub called routes the stand-in does not answer"


def card_results(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}


def test_model_index_carries_every_arm_and_the_datas_commit(trained: Path, evaluation: Path) -> None:
    summary = json.loads((trained / "train_summary.json").read_text())
    metrics = json.loads((evaluation / "metrics.json").read_text())
    card = model_card("org/myrepo-assistant", summary, metrics, adapter_only=False)
    parsed = ModelCard(str(card))  # what the Hub and its clients read back
    assert card_results(parsed) == {
        (arm, name): round(values["value"], 4)
        for arm, scores in metrics["models"].items()
        for name, values in scores.items()
    }
    first = parsed.data.eval_results[0]
    assert (first.task_type, first.dataset_type, first.dataset_split, first.dataset_revision) == (
        "text-generation",
        "org/myrepo",
        "eval",
        SHA,
    )
    assert parsed.data.model_name == "org/myrepo-assistant"
    assert parsed.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert parsed.data.library_name == "transformers"
    assert parsed.data.repotune == {
        "source": "github:org/myrepo",
        "commit": SHA,
        "dataset_hash": "0123456789abcdef",
        "base_model": "smollm2-135m",
        "method": "lora",
        "steps": 4,
    }
    text = parsed.text
    assert "| metric | base | base+retrieval | candidate | candidate+retrieval |" in text
    assert "| line completion exact match | 0.1 (n=40) | 0.2 [0.15, 0.25] (n=40) |" in text
    assert "Decision: promote: perplexity 6.50 vs 9.50" in text

    # Arm names are whatever the evaluation had; no evaluation, no model-index.
    two = {"models": {"base": {"perplexity": metric(3.0)}, "champion": {"perplexity": metric(2.0)}}}
    assert {r.dataset_config for r in eval_results(two, summary["data"])} == {"base", "champion"}
    bare = ModelCard(str(model_card("org/x", summary, None, adapter_only=True)))
    assert bare.data.eval_results is None and "model-index" not in bare.content
    assert bare.data.library_name == "peft" and "PeftModel.from_pretrained" in bare.text


def test_bad_settings_are_refused_naming_the_flag(trained: Path, tmp_path: Path) -> None:
    def config(**changes) -> ExportConfig:
        return ExportConfig(**{"model_dir": trained, "repo_id": "org/name", "token": TOKEN, **changes})

    with pytest.raises(RepotuneError, match="--hub 'no-slash'"):
        config(repo_id="no-slash")
    with pytest.raises(RepotuneError, match=r"--hub 'org/a\.\.b'"):
        config(repo_id="org/a..b")
    with pytest.raises(RepotuneError, match="set HF_TOKEN"):
        config(token=None)
    with pytest.raises(RepotuneError, match="not a folder written by `repotune train`"):
        config(model_dir=tmp_path)
    with pytest.raises(RepotuneError, match="does not exist"):  # said before a missing token
        config(model_dir=tmp_path / "nowhere", token=None)
    with pytest.raises(RepotuneError, match="--evaluation"):
        config(evaluation_dir=tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "train_summary.json").write_text("{}")
    with pytest.raises(RepotuneError, match=r"--adapter-only: .* no LoRA adapter"):
        config(model_dir=full, adapter_only=True)


@pytest.mark.integration
def test_export_pushes_a_private_model_with_its_card_from_the_command_line(
    hub: HubFake, trained: Path, evaluation: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    command = [sys.executable, "-m", "repotune.cli", "export", str(trained), "--hub", "org/myrepo-assistant"]
    done = subprocess.run(
        [*command, "--evaluation", str(evaluation)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"pushed to {hub.url}/org/myrepo-assistant (private)" in done.stderr

    repo = hub.repos["org/myrepo-assistant"]
    assert repo.private
    published = {"config.json", "generation_config.json", "model.safetensors", "README.md"}
    published |= {f"adapter/{p.name}" for p in (trained / "adapter").iterdir() if p.name != "README.md"}
    published |= {p.name for p in trained.iterdir() if p.name.startswith(("tokenizer", "chat_template"))}
    assert set(repo.files) == published | {".gitattributes"}
    for path in published - {"README.md", "adapter/adapter_config.json"}:
        assert repo.files[path] == (trained / path).read_bytes(), path
    assert {"model.safetensors", "adapter/adapter_model.safetensors"} <= repo.lfs_paths
    assert "config.json" not in repo.lfs_paths
    adapter_config = json.loads(repo.files["adapter/adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((trained / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] != ("HuggingFaceTB/SmolLM2-135M-Instruct")  # the trained model's own file is untouched
    assert repo.commits[-1]["summary"] == f"repotune: model trained on github:org/myrepo at {SHA[:7]}"

    # Read back through huggingface_hub: the Hub's parsed metadata, and the README file itself.
    api = HfApi(endpoint=hub.url, token=TOKEN)
    info = api.model_info("org/myrepo-assistant")
    assert info.private and {(r.dataset_config, r.metric_type) for r in info.card_data.eval_results} == {
        (arm, name) for arm in ARMS for name in ("perplexity", "line_exact_match")
    }
    card = ModelCard.load(api.hf_hub_download("org/myrepo-assistant", "README.md"))
    assert card_results(card)[("candidate+retrieval", "line_exact_match")] == 0.4
    assert card.data.repotune["commit"] == SHA

    # A second push of the same model is a new commit on the same repository.
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert len(repo.commits) == 3
    missing = subprocess.run(
        command, env={**env, "HF_TOKEN": ""}, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "error: set HF_TOKEN" in missing.stderr


@pytest.mark.integration
def test_adapter_only_export_loads_with_peft(hub: HubFake, trained: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export_model(
        ExportConfig(
            model_dir=trained, repo_id="org/adapter", token=TOKEN, adapter_only=True, endpoint=hub.url
        ),
        log=lambda _: None,
    )
    repo = hub.repos["org/adapter"]
    tokenizer_files = {p.name for p in trained.iterdir() if p.name.startswith(("tokenizer", "chat_template"))}
    assert (
        set(result.files)
        == {"adapter_config.json", "adapter_model.safetensors", "README.md"} | tokenizer_files
    )
    assert set(repo.files) == set(result.files) | {".gitattributes"}
    assert result.commit_url == f"{hub.url}/org/adapter/commit/{repo.sha}"

    api = HfApi(endpoint=hub.url, token=TOKEN)
    local = tmp_path / "download"
    for path in result.files:
        api.hf_hub_download("org/adapter", path, local_dir=local)
    base = AutoModelForCausalLM.from_pretrained(trained)  # the stand-in for the named base model
    loaded = PeftModel.from_pretrained(base, local)
    assert loaded.peft_config["default"].r == 2
    assert api.model_info("org/adapter").card_data.library_name == "peft"


@pytest.mark.integration
def test_an_existing_public_repository_is_refused_unless_public_was_asked(
    hub: HubFake, trained: Path
) -> None:
    hub.add_repo("org/open", private=False)
    with pytest.raises(RepotuneError, match="org/open exists and is public; pass --public"):
        export_model(ExportConfig(trained, "org/open", TOKEN, endpoint=hub.url), log=lambda _: None)
    assert len(hub.repos["org/open"].commits) == 1  # nothing was pushed

    export_model(
        ExportConfig(trained, "org/open", TOKEN, private=False, endpoint=hub.url), log=lambda _: None
    )
    assert "model.safetensors" in hub.repos["org/open"].files
    export_model(
        ExportConfig(trained, "org/new-public", TOKEN, private=False, endpoint=hub.url), log=lambda _: None
    )
    assert hub.repos["org/new-public"].private is False

    with pytest.raises(RepotuneError, match=r"refused the export to org/open: .*check HF_TOKEN"):
        export_model(ExportConfig(trained, "org/open", "hf_wrong", endpoint=hub.url), log=lambda _: None)


def test_an_unreachable_hub_is_one_line_naming_it(trained: Path) -> None:
    from tests.mlflow_server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RepotuneError, match=f"cannot reach the Hugging Face Hub at {endpoint}"):
        export_model(ExportConfig(trained, "org/name", TOKEN, endpoint=endpoint), log=lambda _: None)


@pytest.mark.integration
def test_the_pipeline_step_exports_only_a_promoted_candidate(
    hub: HubFake, trained: Path, evaluation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repotune.export import export_if_promoted

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    verdict = json.loads((evaluation / "metrics.json").read_text())
    verdict["decision"] = {"promote": False, "reasons": ["do not promote: no gain"]}
    (rejected / "metrics.json").write_text(json.dumps(verdict))

    def step(evaluated: Path, hub_repo: str):
        return export_if_promoted(trained, evaluated, hub_repo, endpoint=hub.url, log=lambda _: None)

    assert step(evaluation, "") is None
    assert step(rejected, "org/step") is None
    assert "org/step" not in hub.repos
    result = step(evaluation, "org/step")
    assert result is not None and hub.repos["org/step"].private
    assert "model-index" in hub.repos["org/step"].files["README.md"].decode()


@pytest.mark.integration
def test_the_retrieval_index_goes_to_private_repositories_only(
    hub: HubFake, trained: Path, tmp_path: Path
) -> None:
    from repotune.records import Kind, Record
    from repotune.retrieval import RetrievalIndex
    from repotune.retrieval.shipped import MODEL_INDEX_DIR, add_to_model

    model = tmp_path / "model"
    shutil.copytree(trained, model)
    code = "def invoice_total(items):\n    return sum(item.cents for item in items)\n"
    records = [
        Record(content=code, kind=Kind.CODE, source="t", id="a", file_path="billing.py", revision="r1")
    ]
    RetrievalIndex.build(records).save(tmp_path / "index")
    add_to_model(tmp_path / "index", model)
    shipped = {f"{MODEL_INDEX_DIR}/{p.relative_to(model / MODEL_INDEX_DIR)}"
               for p in (model / MODEL_INDEX_DIR).rglob("*") if p.is_file()}  # fmt: skip
    assert f"{MODEL_INDEX_DIR}/manifest.json" in shipped

    for adapter_only in (False, True):
        repo_id = f"org/private-{adapter_only}"
        config = ExportConfig(model, repo_id, TOKEN, adapter_only=adapter_only, endpoint=hub.url)
        export_model(config, log=lambda _: None)
        assert shipped <= set(hub.repos[repo_id].files), adapter_only
    files = hub.repos["org/private-False"].files
    assert files[f"{MODEL_INDEX_DIR}/files.jsonl"] == (model / MODEL_INDEX_DIR / "files.jsonl").read_bytes()

    # A public repository gets no index: it holds the repository's files verbatim.
    export_model(
        ExportConfig(model, "org/public", TOKEN, private=False, endpoint=hub.url), log=lambda _: None
    )
    assert not any(path.startswith(f"{MODEL_INDEX_DIR}/") for path in hub.repos["org/public"].files)
    assert "model.safetensors" in hub.repos["org/public"].files
