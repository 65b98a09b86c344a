"""Fault injection: a real `repotune train` process killed with SIGKILL in the middle of a checkpoint save.

The kill lands at a known moment through ``tests/fault_driver.py`` (a pause the test installs; see
there). The rerun is a plain `repotune train`: it must skip the half-written checkpoint, say so, resume
from the one before, and end with exactly the model and the summary of a run that was never killed
(on CPU the Trainer's resume is deterministic: optimizer, scheduler, RNG state and data order all
come back from the checkpoint, so equality is exact, not a tolerance).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repotune.train import checkpoints

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-cpu.yaml"
# Small and quick: 4 steps of 2 x 64 tokens, a checkpoint every 2 steps; the kill comes in the last save.
SETTINGS = ["max_steps=4", "save_every_steps=2", "data.seq_len=64", "micro_batch_size=2"]
KILLED_AT = 4
# Fields a resumed run must report as an uninterrupted one does (times and speeds differ by nature).
SAME = ("steps", "train_loss", "first_losses", "last_losses", "base_eval_loss", "eval_loss")

pytestmark = pytest.mark.faults


def train_command(data: Path, output: Path, *, module: str = "repotune.cli") -> list[str]:
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    return [sys.executable, "-m", module, "train", str(data), "-o", str(output), "--recipe", str(TINY), *sets]


def train(data: Path, output: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        train_command(data, output), cwd=ROOT, capture_output=True, text=True, check=False, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def kill_mid_save(data: Path, output: Path, point: str, signal_file: Path) -> None:
    """Starts training, waits until it pauses inside the save of step KILLED_AT, and SIGKILLs it there."""
    env = {**os.environ, "REPOTUNE_TEST_PAUSE": f"{KILLED_AT}:{point}:{signal_file}"}
    log = (output.parent / f"{output.name}.log").open("w")
    process = subprocess.Popen(
        train_command(data, output, module="tests.fault_driver"), cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        while not signal_file.exists():
            if process.poll() is not None:
                raise AssertionError(f"training ended before the pause: {output.parent / output.name}.log")
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(left: dict, right: dict) -> None:
    import torch

    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


@pytest.fixture(scope="module")
def uninterrupted(cleaned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "model"
    train(cleaned, out)
    return out


@pytest.mark.parametrize("point", ["weights", "marker"])
def test_a_kill_mid_save_resumes_to_the_same_model(
    cleaned: Path, uninterrupted: Path, tmp_path: Path, point: str
) -> None:
    out = tmp_path / "model"
    kill_mid_save(cleaned, out, point, tmp_path / "paused")
    half = out / "checkpoints" / f"checkpoint-{KILLED_AT}"
    assert half.is_dir()  # the kill left the checkpoint folder behind, half-written or unmarked
    assert checkpoints.problem(half) is not None
    assert checkpoints.problem(out / "checkpoints" / "checkpoint-2") is None
    assert not (out / "train_summary.json").exists()

    rerun = train(cleaned, out)
    assert f"skipping checkpoint-{KILLED_AT}: " in rerun.stderr
    assert "resuming from " in rerun.stderr and "checkpoint-2" in rerun.stderr
    assert (out / "checkpoints" / "incomplete" / f"checkpoint-{KILLED_AT}").is_dir()
    assert checkpoints.problem(out / "checkpoints" / f"checkpoint-{KILLED_AT}") is None  # saved anew

    assert_same_tensors(
        weights(out / "adapter" / "adapter_model.safetensors"),
        weights(uninterrupted / "adapter" / "adapter_model.safetensors"),
    )
    assert_same_tensors(weights(out / "model.safetensors"), weights(uninterrupted / "model.safetensors"))
    resumed = json.loads((out / "train_summary.json").read_text())
    reference = json.loads((uninterrupted / "train_summary.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2") and reference["resumed_from"] is None
    assert {key: resumed[key] for key in SAME} == {key: reference[key] for key in SAME}
    assert "Held-out loss" in (out / "README.md").read_text()
