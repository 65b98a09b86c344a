"""Checkpoints a crash can leave half-written: skipped with their reason, moved aside, never resumed from;
a resumed run reports what an uninterrupted one does; a checkpoint_uri that receives nothing fails the run.

One tiny training run (4 steps, a checkpoint every 2) gives real checkpoints; each test breaks a copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.s3_server import running_s3_server, s3_environment

from repotune import train
from repotune.errors import RepotuneError
from repotune.train import checkpoints
from repotune.train.finetune import run_training
from repotune.train.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-cpu.yaml"
SETTINGS = {"max_steps": 4, "save_every_steps": 2, "data.seq_len": 64, "micro_batch_size": 2}
# Fields a resumed run must report as an uninterrupted one does (times and speeds differ by nature).
SAME = ("steps", "train_loss", "first_losses", "last_losses", "base_eval_loss", "eval_loss")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(cleaned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder from an uninterrupted run, with its checkpoints (2 and 4) kept."""
    out = tmp_path_factory.mktemp("trained") / "model"
    run_training(cleaned, out, load_recipe(TINY, SETTINGS), log=lambda _: None)
    return out


def copy_of(trained: Path, tmp_path: Path) -> Path:
    """The run as a crash would leave it: checkpoints and token cache, none of the final outputs."""
    out = tmp_path / "model"
    out.mkdir()
    for name in ("checkpoints", ".token-cache"):
        shutil.copytree(trained / name, out / name)
    return out


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cut_save(checkpoint: Path) -> None:
    # what a kill between the Trainer's weights and the rest of its save leaves (tests/test_faults.py
    # kills a real process there)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", checkpoints.MARKER):
        (checkpoint / name).unlink()


BREAKS = {
    "cut_save": (cut_save, "has no checkpoint_complete.json: its save was interrupted"),
    "unmarked": (lambda c: (c / checkpoints.MARKER).unlink(), "its save was interrupted"),
    "truncated_adapter": (
        lambda c: truncate(c / "adapter_model.safetensors"),
        "adapter_model.safetensors has",
    ),
    "empty_trainer_state": (lambda c: (c / "trainer_state.json").write_text(""), "trainer_state.json has 0"),
    "truncated_optimizer": (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt has"),
}


def test_checkpoints_carry_the_fim_rows_not_the_whole_embedding(trained: Path) -> None:
    from safetensors import safe_open

    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["fim_tokens_added"]  # the tiny recipe's tokenizer has none of its own
    for step in (2, 4):
        adapter = trained / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors"
        with safe_open(adapter, "pt") as f:
            names = list(f.keys())
        assert any(name.endswith("embed_tokens.token_adapter.trainable_tokens_delta") for name in names)
        assert any("lora_A" in name for name in names)
        # PEFT's default would add the resized matrices themselves (base_layer.weight), vocabulary-sized
        assert not [name for name in names if "embed_tokens" in name and "trainable_tokens" not in name]
        assert not [name for name in names if "lm_head" in name and "trainable_tokens" not in name]


@pytest.mark.parametrize("broken", BREAKS)
def test_an_incomplete_newest_checkpoint_is_skipped_named_and_moved_aside(
    trained: Path, tmp_path: Path, broken: str
) -> None:
    out = copy_of(trained, tmp_path)
    folder = out / "checkpoints"
    damage, reason = BREAKS[broken]
    damage(folder / "checkpoint-4")
    lines: list[str] = []
    assert checkpoints.latest_complete(folder, lines.append) == folder / "checkpoint-2"
    (line,) = lines
    assert line.startswith("skipping checkpoint-4: ") and reason in line
    assert line.endswith(f"moved it to {folder / 'incomplete' / 'checkpoint-4'}")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "incomplete", checkpoints.RUN]
    # the next run does not trip on it again
    assert checkpoints.latest_complete(folder, lines.append) == folder / "checkpoint-2" and len(lines) == 1


def test_file_checks_catch_damage_the_sizes_do_not_show(trained: Path, tmp_path: Path) -> None:
    """Same size, wrong content (a disk that lost pages): the load checks still refuse it."""
    out = copy_of(trained, tmp_path)
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert checkpoints.problem(checkpoint) is None
    state = checkpoint / "trainer_state.json"
    state.write_bytes(b"\0" * state.stat().st_size)
    assert checkpoints.problem(checkpoint).startswith("trainer_state.json does not load")
    shutil.copyfile(trained / "checkpoints" / "checkpoint-4" / "trainer_state.json", state)
    optimizer = checkpoint / "optimizer.pt"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)
    assert checkpoints.problem(checkpoint).startswith("optimizer.pt does not load")


def same_weights(left: Path, right: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    mine, theirs = load_file(str(left)), load_file(str(right))
    return mine.keys() == theirs.keys() and all(torch.equal(mine[name], theirs[name]) for name in mine)


def test_a_rerun_resumes_past_a_broken_checkpoint_to_the_same_model(
    cleaned: Path, trained: Path, tmp_path: Path
) -> None:
    out = copy_of(trained, tmp_path)
    truncate(out / "checkpoints" / "checkpoint-4" / "optimizer.pt")
    lines: list[str] = []
    summary = run_training(cleaned, out, load_recipe(TINY, SETTINGS), log=lines.append)
    assert summary["resumed_from"] == str(out / "checkpoints" / "checkpoint-2")
    assert any(line.startswith("skipping checkpoint-4: optimizer.pt has") for line in lines)
    # on CPU the Trainer's resume is deterministic (optimizer, scheduler, RNG state and data order come
    # back from the checkpoint), so the model is the uninterrupted run's, exactly
    assert same_weights(out / "model.safetensors", trained / "model.safetensors")
    assert same_weights(
        out / "adapter" / "adapter_model.safetensors", trained / "adapter" / "adapter_model.safetensors"
    )


def test_a_resumed_run_reports_what_an_uninterrupted_one_does(
    cleaned: Path, trained: Path, tmp_path: Path
) -> None:
    out = copy_of(trained, tmp_path)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")  # killed before its last save began
    result = train.run(
        train.TrainConfig(data=cleaned, output=out, recipe=load_recipe(TINY, SETTINGS)), log=lambda _: None
    )
    summary = json.loads(result.output.summary.read_text())
    reference = json.loads((trained / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoints" / "checkpoint-2")
    assert {key: summary[key] for key in SAME} == {key: reference[key] for key in SAME}
    assert len(summary["first_losses"]) == 4  # every step, the two before the resume included
    assert result.base_eval_loss == reference["base_eval_loss"] is not None
    assert "Held-out loss" in result.output.model_card.read_text()
    assert result.output.model_card.read_text() == (trained / "README.md").read_text()


def test_checkpoints_of_a_run_on_other_data_are_not_resumed_from(
    cleaned: Path, trained: Path, tmp_path: Path
) -> None:
    out = copy_of(trained, tmp_path)
    other = tmp_path / "other-data"
    shutil.copytree(cleaned, other)
    train_file = other / "train.jsonl"
    train_file.write_text("".join(train_file.read_text().splitlines(keepends=True)[1:]))  # one record less
    before = sorted(path.name for path in (out / "checkpoints").iterdir())
    with pytest.raises(RepotuneError, match=r"holds checkpoints of another run \(dataset_hash ") as raised:
        run_training(other, out, load_recipe(TINY, SETTINGS), log=lambda _: None)
    assert f"train into a new -o folder, or delete {out / 'checkpoints'} to start over" in str(raised.value)
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == before  # nothing moved


def test_checkpoints_of_another_recipe_are_refused_in_one_line_naming_what_changed(
    cleaned: Path, trained: Path, tmp_path: Path
) -> None:
    """A changed model shape would fail to load (a traceback), a changed learning rate or batch would
    go on with the old one, a changed max_steps with the old schedule: each is refused, before any work."""
    out = copy_of(trained, tmp_path)
    before = sorted(path.name for path in (out / "checkpoints").iterdir())
    changes = {
        ("lora.rank", 4): "lora.rank 8 -> 4",
        ("learning_rate", 0.1): "learning_rate 0.003 -> 0.1",
        ("data.seq_len", 128): "data.seq_len 64 -> 128",
        ("max_steps", 12): "max_steps 4 -> 12",
        ("data.kind_weights.commit", 0.0): "data.kind_weights.commit 1.0 -> 0.0",
    }
    for (key, value), shown in changes.items():
        with pytest.raises(RepotuneError, match=r"holds checkpoints of another run \(") as raised:
            run_training(cleaned, out, load_recipe(TINY, {**SETTINGS, key: value}), log=lambda _: None)
        assert f"({shown}): resuming from them would mix" in str(raised.value), key
    two = {**SETTINGS, "max_steps": 30, "micro_batch_size": 4}
    with pytest.raises(RepotuneError, match=r"\(micro_batch_size 2 -> 4, max_steps 4 -> 30\)"):
        run_training(cleaned, out, load_recipe(TINY, two), log=lambda _: None)
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == before
    assert not (out / "model.safetensors").exists()

    # on the command line: one line, exit 2, as other input errors
    sets = [f"{k}={v}" for k, v in {**SETTINGS, "lora.rank": 4}.items()]
    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "train", str(cleaned), "-o", str(out),
         "--recipe", str(TINY), *(arg for setting in sets for arg in ("--set", setting))],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"error: {out / 'checkpoints'} holds checkpoints of another run (lora.rank 8 -> 4)"
    )


def test_a_checkpoint_restored_from_the_store_is_checked_against_the_run(
    trained: Path, tmp_path: Path
) -> None:
    checkpoint = trained / "checkpoints" / "checkpoint-4"
    run = json.loads((checkpoint / checkpoints.RUN).read_text())
    assert (
        checkpoints.problem(checkpoint) is None
        and checkpoints.RUN in json.loads((checkpoint / checkpoints.MARKER).read_text())["files"]
    )  # listed in the marker: an upload carries it
    checkpoints.check_checkpoint_run(checkpoint, run)  # the same run: resumed from
    with pytest.raises(
        RepotuneError, match=r"checkpoint-4 holds checkpoints of another run \(max_steps 4 -> 8\)"
    ):
        checkpoints.check_checkpoint_run(checkpoint, {**run, "max_steps": 8})
    # a record written before a setting was recorded is judged on what it has
    checkpoints.check_checkpoint_run(checkpoint, {**run, "new_setting": 1})


def test_a_run_whose_checkpoints_never_reach_checkpoint_uri_fails(
    cleaned: Path, trained: Path, tmp_path: Path
) -> None:
    """The store is up and refuses every upload (a bucket that is not there): the model is written,
    the summary lists the failures, and the command ends non-zero."""
    # it resumes from checkpoint-2 on disk, so the store is first called for the upload of checkpoint-4
    out = copy_of(trained, tmp_path)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    uri = "s3://no-such-bucket/runs/1/checkpoints"
    sets = [f"checkpoint_uri={uri}", *(f"{k}={v}" for k, v in SETTINGS.items())]
    with running_s3_server() as endpoint, s3_environment(endpoint):
        done = subprocess.run(
            [sys.executable, "-m", "repotune.cli", "train", str(cleaned), "-o", str(out),
             "--recipe", str(TINY), *(arg for setting in sets for arg in ("--set", setting))],
            capture_output=True, text=True, check=False, timeout=900,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "warning: checkpoint checkpoint-4 was not uploaded" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: checkpoint_uri: checkpoint-4, the newest checkpoint, was not uploaded to {uri}"
    )
    assert "no-such-bucket" in last and str(out) in last
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and (out / "model.safetensors").is_file()  # the model is not lost
    publish = summary["publish"]
    assert publish["ok"] is False and publish["uploaded"] == [] and publish["checkpoint_uri"] == uri
    assert [entry["checkpoint"] for entry in publish["failed"]] == ["checkpoint-4"]
    assert "does not exist" in publish["failed"][0]["error"]


def test_checkpoint_uri_keeps_as_many_checkpoints_as_the_disk(cleaned: Path, tmp_path: Path) -> None:
    """A real run against a real store, ``save_total_limit: 1``: the store ends with the newest
    checkpoint alone, as the disk does, and the summary says which were deleted from it."""
    from repotune import storage

    uri = "s3://ckpts/runs/1/checkpoints"
    lines: list[str] = []
    recipe = load_recipe(TINY, {**SETTINGS, "save_total_limit": 1, "checkpoint_uri": uri})
    with running_s3_server() as endpoint, s3_environment(endpoint):
        storage.client_from_env().make_bucket("ckpts")
        summary = run_training(cleaned, tmp_path / "model", recipe, log=lines.append)
        in_store = sorted({key.split("/")[0] for key in storage.prefix_etags(uri)})
    assert in_store == ["checkpoint-4"]
    assert [p.name for p in checkpoints.checkpoint_folders(tmp_path / "model" / "checkpoints")] == [
        "checkpoint-4"
    ]
    assert summary["publish"]["uploaded"] == ["checkpoint-2", "checkpoint-4"]
    assert summary["publish"]["deleted"] == ["checkpoint-2"] and summary["publish"]["ok"] is True
    assert f"deleted checkpoint-2 from {uri} (keeping the newest 1)" in lines


def _stop_at_step_3(line: str) -> None:
    if line.startswith("step 3/"):
        raise KeyboardInterrupt  # Ctrl-C after checkpoint-2 was saved


@pytest.mark.parametrize("place", ["checkpoints_under", "resume_under"])
def test_a_rerun_into_a_new_output_folder_resumes_from_the_checkpoints_kept_outside_it(
    cleaned: Path, tmp_path: Path, place: str
) -> None:
    """kfp.local gives every run of the train step a new output folder: the checkpoints go to a folder
    that outlives it (a local --artifacts folder, or repotune run's work folder), where a rerun finds them."""
    under = tmp_path / "kept"
    where = {place: str(under) if place == "checkpoints_under" else under}

    def config(name: str) -> train.TrainConfig:
        recipe = load_recipe(TINY, SETTINGS)
        return train.TrainConfig(data=cleaned, output=tmp_path / name, recipe=recipe, keep_checkpoints=False,
                                 **where)  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        train.run(config("first"), log=_stop_at_step_3)
    assert not (tmp_path / "first" / "checkpoints").exists()  # no link left in the model folder
    lines: list[str] = []
    result = train.run(config("second"), log=lines.append)
    kept = under / result.recipe_key / "checkpoints"
    assert f"resuming from checkpoint-2 of an earlier run ({kept})" in lines
    summary = json.loads(result.output.summary.read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    assert not (tmp_path / "second" / "checkpoints").exists()
    # published checkpoints stay, as an s3:// prefix's do; the work folder's go once the model is made
    assert (kept / "checkpoint-4").is_dir() == (place == "checkpoints_under")
    # until the pipeline's train step has published the model: then the published ones go too
    lines.clear()
    result.drop_published_checkpoints(log=lines.append)
    assert not kept.exists()
    if place == "checkpoints_under":
        assert result.published_checkpoints == str(kept)
        assert lines == [f"deleted checkpoint-2, checkpoint-4 from {kept}: the model is published"]
    else:
        assert result.published_checkpoints is None and lines == []
