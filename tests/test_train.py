"""The tiny recipe end to end on real cleaned data: loss falls, LoRA moves, the base does not, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from repotune import train
from repotune.errors import RepotuneError
from repotune.train import TrainConfig, checkpoints
from repotune.train.finetune import run_training
from repotune.train.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-cpu.yaml"

PROJECT = {
    f"src/shop/module_{i}.py": "\n".join(
        f"def price_{i}_{j}(order, discount={j}):\n"
        f"    total = sum(item.cost * item.quantity for item in order.items)\n"
        f"    return round(total * (100 - discount) / 100, 2)\n"
        for j in range(12)
    )
    for i in range(14)
}
PROJECT["README.md"] = "# Shop\n\nPrices orders and applies discounts for the shop service.\n" * 3


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.integration
def test_tiny_recipe_learns_and_only_the_adapter_moves(cleaned: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from repotune.models import resolve_base_model

    base_dir = resolve_base_model("tiny")
    base_hash = _sha(base_dir / "model.safetensors")
    out = tmp_path / "model"
    result = train.run(TrainConfig(data=cleaned, output=out, recipe=load_recipe(TINY)), log=lambda _: None)
    summary = json.loads(result.output.summary.read_text())
    assert (result.steps, result.eval_loss, result.base_eval_loss) == (
        summary["steps"],
        summary["eval_loss"],
        summary["base_eval_loss"],
    )

    assert summary["steps"] == 20
    assert summary["last_losses"][-1] < summary["first_losses"][0]
    # Both ranks' gradients reached one model: the training loss fell. (The held-out loss is taken on
    # the held-out files' own lines, which four steps of a tiny model do not move.)
    assert summary["last_losses"][-1] < summary["first_losses"][0]
    assert summary["eval_loss"] is not None and summary["base_eval_loss"] is not None
    assert summary["data"]["real_token_fraction"] >= 0.98
    assert _sha(base_dir / "model.safetensors") == base_hash  # the base model on disk is untouched

    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: nonzero means trained

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    merged = AutoModelForCausalLM.from_pretrained(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[name], merged.state_dict()[name])
    assert torch.equal(
        base.state_dict()["model.layers.0.input_layernorm.weight"],
        merged.state_dict()["model.layers.0.input_layernorm.weight"],
    )  # not adapted

    # The adapter reloads on the base and gives the merged model's logits.
    base.resize_token_embeddings(merged.config.vocab_size)
    reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    fim_middle = merged.config.vocab_size - 1  # an added FIM token: its row comes from the adapter
    ids = torch.tensor([[1, 5, 9, 42, fim_middle, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged.eval()(ids).logits, atol=1e-4, rtol=1e-4)
    saved = json.loads((out / "train_summary.json").read_text())
    assert saved["eval_loss"] == summary["eval_loss"]
    assert "Held-out loss" in (out / "README.md").read_text()
    # every file is readable as the others are (a server may run as another user)
    modes = {path.name: path.stat().st_mode & 0o777 for path in [*out.iterdir(), *(out / "adapter").iterdir()]
             if path.is_file()}  # fmt: skip
    assert modes["model.safetensors"] == modes["adapter_model.safetensors"] == modes["config.json"], modes


@pytest.mark.integration
def test_full_fine_tuning_moves_every_weight_writes_no_adapter_and_resumes_to_the_same_model(
    cleaned: Path, tmp_path: Path
) -> None:
    """The CPU demo recipe's method: the whole model trains, layer norms too; the folder is
    the model (no ``adapter/``, and the model card does not point at one); a kill before the last save
    resumes to the weights an uninterrupted run ends with."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from repotune.models import resolve_base_model

    settings = {"method": "full", "learning_rate": 1e-3, "max_steps": 4, "save_every_steps": 2}
    recipe = load_recipe(TINY, settings)
    whole = run_training(cleaned, tmp_path / "whole", recipe, log=lambda _: None)
    assert whole["method"] == "full" and whole["steps"] == 4
    assert whole["last_losses"][-1] < whole["first_losses"][0]
    assert not (tmp_path / "whole" / "adapter").exists()
    card = (tmp_path / "whole" / "README.md").read_text()
    assert "method: full" in card and "adapter" not in card

    base = AutoModelForCausalLM.from_pretrained(resolve_base_model("tiny")).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight"):
        assert not torch.equal(base[name], tuned[name]), name  # LoRA leaves the norm as it was

    out = tmp_path / "resumed"
    run_training(cleaned, out, recipe, log=lambda _: None)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")  # killed before its last save
    lines: list[str] = []
    summary = run_training(cleaned, out, recipe, log=lines.append)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    assert any("resuming from" in line for line in lines)
    resumed, uninterrupted = (
        load_file(str(out / "model.safetensors")),
        load_file(str(tmp_path / "whole" / "model.safetensors")),
    )
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)


@pytest.mark.integration
def test_a_restarted_run_resumes_from_its_last_checkpoint(cleaned: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    settings = {"max_steps": 6, "save_every_steps": 2}
    whole = run_training(cleaned, out, load_recipe(TINY, settings), log=lambda _: None)
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")  # killed before its last save
    before_resume = checkpoints.train_seconds(out / "checkpoints" / "checkpoint-4")
    assert 0 < before_resume <= whole["train_seconds"]
    lines: list[str] = []
    # how often to save and the time budget may change on a resume: they do not shape what is trained
    again = load_recipe(TINY, {**settings, "save_every_steps": 3, "max_minutes": 60})
    summary = run_training(cleaned, out, again, log=lines.append)
    assert summary["resumed_from"].endswith("checkpoint-4")
    assert summary["steps"] == 6
    assert any("resuming from" in line for line in lines)
    # the whole run's numbers, not the resumed part's: the base loss and all six steps' losses
    assert summary["base_eval_loss"] is not None
    assert len(summary["first_losses"]) == 5 and summary["train_loss"] is not None
    assert not any(line.startswith("base model eval loss") for line in lines)  # read, not scored again
    # the time of the steps before the resume counts, and so do their tokens and passes
    assert summary["train_seconds"] == pytest.approx(
        before_resume + summary["train_seconds_this_run"], abs=0.1
    )
    assert summary["train_seconds"] > summary["train_seconds_this_run"]
    assert (summary["tokens_seen"], summary["epochs_seen"]) == (whole["tokens_seen"], whole["epochs_seen"])
    # train_seconds is rounded to 0.1 s (of about 2 s here), tokens_per_second comes from the unrounded time
    seconds, tokens = summary["train_seconds"], summary["tokens_seen"]
    assert (
        tokens / (seconds + 0.05) - 0.05 <= summary["tokens_per_second"] <= tokens / (seconds - 0.05) + 0.05
    )

    # Rerun as is, it has nothing left to train: the model and summary stay the finished run's.
    written = {path: path.read_bytes() for path in (out / "train_summary.json", out / "model.safetensors")}
    lines.clear()
    assert run_training(cleaned, out, again, log=lines.append) == summary
    assert lines[-1].startswith("already trained: 6 steps (") and lines[-1].endswith("; nothing to do")
    assert not any("step 6/6" in line or "eval loss" in line for line in lines)
    assert {path: path.read_bytes() for path in written} == written


@pytest.mark.integration
def test_the_summary_counts_the_tokens_and_passes_the_steps_held(cleaned: Path, tmp_path: Path) -> None:
    """epochs in the recipe is unused under max_steps: the summary says how often the data was seen."""
    recipe = load_recipe(TINY, {"max_steps": 5, "data.max_train_blocks": 6, "save_every_steps": 50})
    summary = run_training(cleaned, tmp_path / "m", recipe, log=lambda _: None)
    assert summary["data"]["train_blocks"] == 6 and summary["recipe"]["epochs"] == 1.0
    # 6 blocks, 4 a step: a pass is a step of 4 and one of the 2 left, so 5 steps are 2.5 passes
    assert summary["epochs_seen"] == 2.5
    real = (4 + 2 + 4 + 2 + 4) * 128 * summary["data"]["real_token_fraction"]
    assert summary["tokens_seen"] == pytest.approx(real, rel=1e-3)


def test_bad_training_input_fails_before_any_work(cleaned: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text("")
    with pytest.raises(RepotuneError, match="is empty: nothing to train on"):
        run_training(tmp_path / "empty", tmp_path / "o", load_recipe(TINY))
    with pytest.raises(RepotuneError, match=r"has no train\.jsonl"):
        run_training(tmp_path, tmp_path / "o", load_recipe(TINY))
    with pytest.raises(RepotuneError, match="no-such-model"):
        run_training(cleaned, tmp_path / "o", load_recipe(TINY, {"base_model": "no-such-model"}))
    with pytest.raises(RepotuneError, match="max_memory_gb"):
        run_training(cleaned, tmp_path / "o", load_recipe(TINY, {"max_memory_gb": 0.0001}))
    with pytest.raises(RepotuneError, match="qlora needs a CUDA GPU"):
        run_training(cleaned, tmp_path / "o", load_recipe(TINY, {"method": "qlora"}))
    assert not (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.integration
def test_training_is_tracked_in_mlflow_and_survives_the_server_going_away(
    cleaned: Path, tmp_path: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient
    from tests.mlflow_server import MlflowServer

    from repotune.train import callbacks

    server = MlflowServer(tmp_path / "mlflow")
    server.wait_healthy()
    try:
        summary = run_training(
            cleaned, tmp_path / "m1", load_recipe(TINY, {"max_steps": 4}), tracking_uri=server.url
        )
        client = MlflowClient(server.url)
        (run,) = client.search_runs([client.get_experiment_by_name("repotune").experiment_id])
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
        for metric in ("eval_loss", "base_eval_loss", "learning_rate", "tokens_per_second"):
            assert metric in run.data.metrics, metric
        assert run.data.metrics["eval_loss"] == pytest.approx(summary["eval_loss"])
        assert run.data.params["recipe.learning_rate"] == "0.003"
        assert run.data.tags["dataset.source"].endswith("tree")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"adapter", "train_summary.json"} <= artifacts

        # Now the server dies after the second step: training goes on and writes its model.
        real_on_log = callbacks.Tracking.on_log

        def dies_at_step_2(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 2:
                server.kill()
            return real_on_log(self, args, state, control, logs=logs, **kwargs)

        monkeypatch.setattr(callbacks.Tracking, "on_log", dies_at_step_2)
        survived = run_training(
            cleaned, tmp_path / "m2", load_recipe(TINY, {"max_steps": 6}), tracking_uri=server.url
        )
        assert survived["steps"] == 6
        assert (tmp_path / "m2" / "model.safetensors").is_file()
    finally:
        server.kill()


@pytest.mark.integration
def test_an_unreachable_tracking_server_fails_before_training(cleaned: Path, tmp_path: Path) -> None:
    from tests.mlflow_server import free_port

    with pytest.raises(RepotuneError, match=r"127\.0\.0\.1"):
        run_training(
            cleaned, tmp_path / "m", load_recipe(TINY), tracking_uri=f"http://127.0.0.1:{free_port()}"
        )


@pytest.mark.integration
def test_train_from_the_command_line(cleaned: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "train", str(cleaned), "-o", str(tmp_path / "m"),
         "--recipe", str(TINY), "--set", "max_steps=50", "--set", "max_epochs=0.1",
         "--set", "data.seq_len=64"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # the tiny recipe's 64 training blocks, 4 a step: a tenth of a pass is 2 steps of the 50 asked for
    assert "max_steps 50 held to 2: 0.1 passes over 64 training blocks, 4 a step" in done.stderr
    assert "step 2/2" in done.stderr and "held-out loss: base" in done.stderr
    assert json.loads((tmp_path / "m" / "train_summary.json").read_text())["recipe"]["data"]["seq_len"] == 64
    bad = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "train", str(cleaned), "-o", str(tmp_path / "m"),
         "--recipe", str(TINY), "--set", "lerning_rate=1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "error: recipe tiny-cpu.yaml: unknown key 'lerning_rate' (did you mean 'learning_rate'?)"
    )
    # a shipped recipe by name, as `repotune run` and `repotune compile` take it: the same recipe
    named = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "train", str(cleaned), "-o", str(tmp_path / "m"),
         "--recipe", "tiny-cpu", "--set", "lerning_rate=1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert named.returncode == 2 and named.stderr.strip() == bad.stderr.strip()


@pytest.mark.slow
def test_two_process_ddp_on_cpu_with_gloo(cleaned: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.mlflow_server import free_port

    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "-m", "repotune.cli", "train", str(cleaned), "-o", str(out), "--recipe", str(TINY),
         "--set", "max_steps=4", "--set", "micro_batch_size=2"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 4
    # Both ranks' gradients reached one model: the training loss fell. (The held-out loss is taken on
    # the held-out files' own lines, which four steps of a tiny model do not move.)
    assert summary["last_losses"][-1] < summary["first_losses"][0]
    assert summary["eval_loss"] is not None and summary["base_eval_loss"] is not None


def test_kind_weights_shape_the_training_blocks_and_the_reported_mix(tmp_path: Path) -> None:
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.records import Kind, Record
    from repotune.train.finetune import training_blocks

    records = [
        *(
            Record(content=text, kind=Kind.CODE, source="t", id=f"c{i}", file_path=path, language="python")
            for i, (path, text) in enumerate(PROJECT.items())
            if path.endswith(".py")
        ),
        *(
            Record(
                content=f"Fix {i}\n\ndiff --git a/x b/x\n+x = {i}\n" * 20,
                kind=Kind.COMMIT,
                source="t",
                id=f"k{i}",
            )
            for i in range(30)
        ),
    ]
    tokenizer = make_tiny_tokenizer()
    plain = load_recipe(TINY, {"data.fim_rate": 0.0})
    no_commits = load_recipe(TINY, {"data.fim_rate": 0.0, "data.kind_weights.commit": 0.0})
    mix: dict[str, int] = {}
    before = training_blocks(records, tokenizer, plain, 0.0, tmp_path, None, weighted=True, mix=mix)
    assert set(mix) == {"code", "commit"} and sum(mix.values()) == before.real_tokens
    commit_tokens = mix.pop("commit")
    code_tokens = mix.pop("code")
    after = training_blocks(records, tokenizer, no_commits, 0.0, tmp_path, None, weighted=True, mix=mix)
    assert mix == {"code": code_tokens} and after.real_tokens == before.real_tokens - commit_tokens
    assert "Fix 3" not in tokenizer.decode(after.input_ids.reshape(-1))
    unweighted = training_blocks(records, tokenizer, no_commits, 0.0, tmp_path, None)
    assert unweighted.real_tokens == before.real_tokens  # held-out blocks (weighted=False) keep every kind

    # The code file the newest commit touched, three times over; the older commit's file once.
    touched = next(r for r in records if r.kind is Kind.CODE)
    other = next(r for r in records if r.kind is Kind.CODE and r is not touched)
    dated = [
        Record(content="Old\n", kind=Kind.COMMIT, source="t", id="old",
               meta={"date": "2024-01-01T00:00:00+00:00", "files": [other.file_path]}),
        Record(content="New\n", kind=Kind.COMMIT, source="t", id="new",
               meta={"date": "2024-02-01T00:00:00+00:00", "files": [touched.file_path]}),
    ]  # fmt: skip
    recent = load_recipe(
        TINY,
        {
            "data.fim_rate": 0.0,
            "data.recent_commits": 1,
            "data.recent_weight": 3,
            "data.kind_weights.commit": 0,
        },
    )
    mix, recent_mix = {}, {}
    boosted = training_blocks(
        records + dated, tokenizer, recent, 0.0, tmp_path, None, weighted=True, mix=mix, recent_mix=recent_mix
    )
    touched_tokens = training_blocks([touched], tokenizer, plain, 0.0, tmp_path, None).real_tokens
    assert recent_mix == {"files": 1, "tokens": 3 * touched_tokens}
    assert boosted.real_tokens == code_tokens + 2 * touched_tokens


def test_activation_checkpointing_reaches_the_trainer_under_either_name(tmp_path: Path) -> None:
    # transformers renamed TrainingArguments.gradient_checkpointing to activation_checkpointing within
    # 5.x; the pin allows both sides (a GPU image with transformers 5.17 refused the new name).
    import dataclasses

    from repotune.train.finetune import _checkpointing_argument, training_arguments

    @dataclasses.dataclass
    class Before:
        gradient_checkpointing: bool = False

    @dataclasses.dataclass
    class After:
        activation_checkpointing: bool = False
        gradient_checkpointing: bool | None = None  # the deprecated alias

    assert _checkpointing_argument(Before) == "gradient_checkpointing"
    assert _checkpointing_argument(After) == "activation_checkpointing"
    gpu = load_recipe(ROOT / "configs" / "qwen2.5-coder-0.5b-gpu.yaml")
    assert gpu.gradient_checkpointing
    arguments = training_arguments(gpu, tmp_path, 10, precision="fp32", has_eval=False, use_cpu=True)
    assert getattr(arguments, _checkpointing_argument(type(arguments))) is True


def test_a_handful_of_steps_from_epochs_is_warned_about_and_max_steps_is_not() -> None:
    from repotune.train.finetune import few_steps_warning

    gpu = load_recipe(ROOT / "configs" / "qwen2.5-coder-0.5b-gpu.yaml")  # 8 x 4 blocks a step, 2 epochs
    # semver on the GPU benchmark: 18 blocks of 2,048 tokens gave 2 steps
    warning = few_steps_warning(gpu, 2, 18, 32)
    assert warning is not None
    assert "only 2 optimizer steps: 18 training blocks, 32 a step, for 2 epochs" in warning
    assert "take smaller steps (--set gradient_accumulation_steps=1) or more epochs" in warning
    one_block = load_recipe(None, {"epochs": 1, "micro_batch_size": 1, "gradient_accumulation_steps": 1})
    assert "give it more epochs" in few_steps_warning(one_block, 5, 5, 1)
    assert few_steps_warning(gpu, 120, 1920, 32) is None  # a repository the recipe was sized for
    demo = load_recipe(ROOT / "configs" / "smollm2-135m-cpu.yaml")  # max_steps: 40, set by hand
    assert demo.max_steps is not None and few_steps_warning(demo, demo.max_steps, 10, 4) is None
    assert few_steps_warning(load_recipe(None, {"max_steps": 3}), 3, 10, 4) is None


def test_max_epochs_holds_max_steps_to_a_few_passes_over_a_small_repository() -> None:
    from repotune.train.finetune import planned_steps

    capped = load_recipe(None, {"max_steps": 40, "max_epochs": 1.5})
    # 40 blocks, 4 a step: 10 steps a pass, so 1.5 passes are 15 steps, not 40
    steps, note = planned_steps(capped, 40, 4)
    assert steps == 15
    assert note is not None and note.startswith("max_steps 40 held to 15: 1.5 passes over 40 training blocks")
    # a repository big enough for max_steps runs them all, without a note
    assert planned_steps(capped, 1000, 4) == (40, None)
    # a part-filled last batch is a step: 41 blocks are 11 steps a pass
    assert planned_steps(load_recipe(None, {"max_steps": 40, "max_epochs": 1}), 41, 4)[0] == 11
    # no cap: max_steps as set, however small the data
    assert planned_steps(load_recipe(None, {"max_steps": 40}), 8, 4) == (40, None)
    # without max_steps, epochs decide and max_epochs has nothing to hold
    assert planned_steps(load_recipe(None, {"epochs": 2, "max_epochs": 1}), 40, 4) == (20, None)
    assert planned_steps(load_recipe(None, {"epochs": 0.01}), 40, 4) == (1, None)
    with pytest.raises(RepotuneError, match="max_epochs must be positive"):
        load_recipe(None, {"max_steps": 40, "max_epochs": 0})


def test_only_fim_tokens_added_to_the_vocabulary_get_trainable_rows(tmp_path: Path) -> None:
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.train.finetune import load_tokenizer

    recipe = load_recipe(TINY)
    plain, qwen = make_tiny_tokenizer(), make_tiny_tokenizer()
    qwen.add_special_tokens(
        {"additional_special_tokens": ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]}
    )
    for name, tokenizer in (("plain", plain), ("qwen", qwen)):
        tokenizer.save_pretrained(tmp_path / name)
    loaded, before, added = load_tokenizer(tmp_path / "plain", recipe)
    assert len(added) == 3 and len(loaded) == before + 3 and min(added) >= before  # StarCoder's, new rows
    loaded, before, added = load_tokenizer(tmp_path / "qwen", recipe)
    assert added == [] and len(loaded) == before  # the model's own: pretrained rows, left as they are


def test_progress_reports_the_rate_after_the_warm_up_as_its_estimate_does(monkeypatch) -> None:
    from types import SimpleNamespace

    from repotune.train import callbacks

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    progress = callbacks.Progress(20, lines.append)
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    progress.on_train_begin(None, state, None)
    for step in range(1, 11):
        now[0] += 10.0 if step == 1 else 1.0  # the first step warms up: ten times a later one
        state.global_step = step
        state.num_input_tokens_seen += 1000  # the Trainer's count of the batch's tokens
        progress.on_step_end(None, state, None)
        if step in (2, 10):
            progress.on_log(None, state, None, logs={"loss": 1.0, "learning_rate": 1e-3})
    early, estimate, later = lines
    assert early.endswith("182 tok/s  ETA 1.6 min")  # two steps in 11 s: all there is to go on
    assert estimate == "estimate: 1.00 s a step, 1,000 tokens/s; 14 steps left, about 14 s"
    assert later.endswith("1,000 tok/s  ETA 10 s")  # steps 4-10 at 1 s each, not the 19 s since the start


def test_progress_counts_the_tokens_a_step_holds_not_the_batch_size(monkeypatch) -> None:
    from types import SimpleNamespace

    from repotune.train import callbacks

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    # one block of 128 tokens, half of it padding, in every step of a batch of 4
    progress = callbacks.Progress(8, lines.append, real_token_fraction=0.5)
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    progress.on_train_begin(None, state, None)
    for step in range(1, 8):
        now[0] += 1.0
        state.global_step, state.num_input_tokens_seen = step, state.num_input_tokens_seen + 128
        progress.on_step_end(None, state, None)
    progress.on_log(None, state, None, logs={"loss": 1.0, "learning_rate": 1e-3})
    assert lines[0] == "estimate: 1.00 s a step, 64 tokens/s; 2 steps left, about 2 s"
    assert lines[1].endswith("  64 tok/s  ETA 1 s")


def test_the_plan_says_what_a_step_holds_and_warns_of_many_passes() -> None:
    from repotune.train.finetune import many_passes_warning, planned_passes, steps_line

    assert steps_line(20, 1, 4, 128) == "20 steps of 1 block (128 tokens), 20 passes over the data"
    assert steps_line(20, 15, 4, 128) == "20 steps of up to 4 blocks (512 tokens), 5 passes over the data"
    assert steps_line(2, 64, 4, 128) == "2 steps of 4 blocks (512 tokens), 0.125 passes over the data"
    assert planned_passes(5, 6, 4) == 2.5  # a step of 4, one of the 2 left, and so on
    recipe = load_recipe(TINY)  # max_steps 20, no max_epochs
    warning = many_passes_warning(recipe, 20, 1, 4)
    assert warning is not None and warning.startswith(
        "warning: 20 steps pass over the 1 training block 20 times (4 blocks a step)."
    )
    assert "--set max_epochs=3" in warning
    assert many_passes_warning(recipe, 20, 8, 4) is None  # 10 passes: not many
    assert many_passes_warning(load_recipe(TINY, {"max_epochs": 50.0}), 20, 1, 4) is None  # asked for
    assert many_passes_warning(load_recipe(TINY, {"max_steps": None, "epochs": 20.0}), 20, 1, 4) is None


@pytest.mark.integration
def test_one_small_record_trains_one_block_a_step_and_is_counted_so(cleaned: Path, tmp_path: Path) -> None:
    data = tmp_path / "one"
    data.mkdir()
    record = json.loads((cleaned / "train.jsonl").read_text().splitlines()[0])
    record["content"] = "def add(a, b):\n    return a + b\n"
    (data / "train.jsonl").write_text(json.dumps(record) + "\n")
    lines: list[str] = []
    recipe = load_recipe(TINY, {"max_steps": 12, "data.fim_rate": 0.0})
    summary = run_training(data, tmp_path / "m", recipe, log=lines.append)
    (plan,) = [line for line in lines if line.startswith("data: ")]
    assert "data: 1 training block of 128 tokens" in plan
    assert "12 steps of 1 block (128 tokens), 12 passes over the data" in plan
    assert any(line.startswith("warning: 12 steps pass over the 1 training block 12 times") for line in lines)
    assert summary["data"]["train_blocks"] == 1 and summary["epochs_seen"] == 12.0
    real = round(128 * summary["data"]["real_token_fraction"])
    assert real < 64 and summary["tokens_seen"] == 12 * real  # not 12 x 4 blocks x 128
