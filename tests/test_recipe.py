"""Recipes: every shipped config loads, and a bad one fails before any work, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from repotune.errors import RepotuneError
from repotune.train.recipe import Recipe, load_recipe

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {path.name for path in CONFIGS}
    assert {"tiny-cpu.yaml", "smollm2-135m-cpu.yaml"} <= names
    assert any("gpu" in name for name in names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_how_to_run_it(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert "repotune train" in path.read_text()  # each recipe carries the command that runs it


def test_overrides_apply_with_types() -> None:
    recipe = load_recipe(CONFIGS[0], {"max_steps": 3, "data.seq_len": 64, "lora.target_modules": ["q_proj"]})
    assert recipe.max_steps == 3 and recipe.data.seq_len == 64
    assert recipe.lora.target_modules == ("q_proj",)


@pytest.mark.parametrize("written,value", [("1e-3", 1e-3), ("2.0e4", 2e4), ("5E+3", 5e3), ("1.0e-3", 1e-3)])
def test_a_number_in_exponent_form_is_a_number(tmp_path: Path, written: str, value: float) -> None:
    # PyYAML (YAML 1.1) reads `1e-3` and `2.0e4` as strings; a recipe or `--set learning_rate=1e-3` meant
    # the number (the GPU benchmark run failed on exactly that override).
    path = tmp_path / "recipe.yaml"
    path.write_text(f"learning_rate: {written}\n")
    assert load_recipe(path).learning_rate == value
    assert load_recipe(None, {"learning_rate": yaml.safe_load(written)}).learning_rate == value


def test_kind_weights_override_one_kind_and_name_every_record_kind() -> None:
    from repotune.records import Kind

    recipe = load_recipe(None, {"data.kind_weights.commit": 0.25})
    weights = recipe.data.kind_weights.as_mapping()
    assert weights["commit"] == 0.25 and weights["code"] == 1.0
    assert set(weights) == {kind.value for kind in Kind}


@pytest.mark.parametrize(
    "text,message",
    [
        ("lerning_rate: 0.1\n", "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("data:\n  seq_lenght: 10\n", "data: unknown key 'seq_lenght' (did you mean 'seq_len'?)"),
        ("learning_rate: fast\n", "learning_rate must be a number, got 'fast'"),
        ("learning_rate: 1e-3x\n", "learning_rate must be a number, got '1e-3x'"),
        ("max_steps: 2.5\n", "max_steps must be a whole number, got 2.5"),
        ("method: dpo\n", "method must be one of 'lora', 'qlora', 'full', got 'dpo'"),
        ("lora: 8\n", "lora must be a mapping of settings"),
        ("gradient_checkpointing: 'yes'\n", "gradient_checkpointing must be true or false"),
        ("micro_batch_size: 0\n", "micro_batch_size must be at least 1"),
        ("data:\n  fim_rate: 2\n", "data.fim_rate must be between 0 and 1"),
        ("- a\n- b\n", "must be a mapping of settings"),
        ("a: [\n", "is not valid YAML"),
        ('resources:\n  memory: "64"\n', "resources.memory '64' is 64 bytes; give a unit, e.g. 64Gi"),
        ("resources:\n  memory: 64GB\n", "resources.memory '64GB' is not a Kubernetes quantity"),
        ("resources:\n  cpu: 8\n", "resources: cpu must be a string, got 8"),
        ("resources:\n  nodes: 0\n", "resources.nodes must be at least 1"),
        ("data:\n  kind_weights:\n    commit: -1\n", "data.kind_weights.commit must be from 0 to 100"),
        ("data:\n  kind_weights:\n    commits: 1\n", "unknown key 'commits' (did you mean 'commit'?)"),
        ("data:\n  recent_commits: -1\n", "data.recent_commits must be 0 or more"),
        ("data:\n  recent_weight: 101\n", "data.recent_weight must be from 0 to 100"),
    ],
)
def test_bad_recipes_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RepotuneError) as raised:
        load_recipe(path)
    assert message in str(raised.value)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_serving_asks_for_its_own_resources_or_the_training_ones() -> None:
    from repotune.train.recipe import resolve_recipe

    gpu, _ = resolve_recipe("qwen2.5-coder-1.5b-gpu")
    served = gpu.serving_resources()
    assert (served.gpus_per_node, served.cpu, served.memory) == (1, "4", "16Gi")  # not training's 64Gi
    assert served.requirements()["limits"]["nvidia.com/gpu"] == "1" and served.tolerations()
    cpu, _ = resolve_recipe("smollm2-135m-cpu")
    assert cpu.serving is None and cpu.serving_resources() == cpu.resources
    assert resolve_recipe("qwen2.5-coder-1.5b-gpu", {"serving.memory": "24Gi"})[0].serving.memory == "24Gi"
    with pytest.raises(RepotuneError, match=r"serving\.nodes must be 1"):
        resolve_recipe("qwen2.5-coder-1.5b-gpu", {"serving.nodes": 2})
