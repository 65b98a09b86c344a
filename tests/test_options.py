"""Command-line options built from config dataclasses: one default and one help text per setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from repotune.config import field_docs
from repotune.options import Setting, Values, build, default_of, field_of, settings


@dataclass(frozen=True)
class Inner:
    threshold: float = 0.8
    """Similarity at which two records are duplicates."""


@dataclass(frozen=True)
class Outer:
    source: str
    """Where the records come from."""
    size: int = 10
    """Records to keep."""
    inner: Inner = field(default_factory=Inner)
    """The nested settings."""
    kinds: frozenset[str] | None = None
    """Kinds, comma-separated."""
    verbose: bool = False
    """Say more."""


def _app(seen: list[Outer]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @settings(
        Outer,
        Setting("source", argument=True),
        Setting("size"),
        Setting("inner.threshold", ("--threshold",)),
        Setting("kinds", parse=lambda text: frozenset(text.split(","))),
        Setting("verbose"),
    )
    def main(values: Values, extra: int = 0) -> None:
        seen.append(dataclasses.replace(build(Outer, values), size=build(Outer, values).size + extra))

    return app


def test_an_option_takes_its_type_default_and_help_from_the_field() -> None:
    seen: list[Outer] = []
    runner = CliRunner()
    app = _app(seen)
    assert runner.invoke(app, ["here"]).exit_code == 0
    assert seen[-1] == Outer(source="here")  # left out: each field keeps its own default
    done = runner.invoke(app, ["x", "--size", "3", "--threshold", "0.5", "--kinds", "a,b", "--verbose"])
    assert done.exit_code == 0, done.output
    assert seen[-1] == Outer("x", 3, Inner(0.5), frozenset({"a", "b"}), True)
    assert runner.invoke(app, ["x", "--extra", "2"]).exit_code == 0 and seen[-1].size == 12  # its own option
    refused = runner.invoke(app, ["x", "--size", "many"])
    assert refused.exit_code == 2 and "Invalid value for '--size'" in refused.output  # the field's type
    params = {param.name: param for param in typer.main.get_command(app).params}
    assert params["threshold"].help == "Similarity at which two records are duplicates."
    assert params["threshold"].default == 0.8 and params["source"].required
    assert params["verbose"].secondary_opts == ["--no-verbose"]


def test_a_field_without_a_docstring_cannot_become_an_option() -> None:
    @dataclass(frozen=True)
    class Undocumented:
        size: int = 1

    with pytest.raises(TypeError, match="has no docstring"):
        settings(Undocumented, Setting("size"))(lambda values: None)
    with pytest.raises(TypeError, match="has no setting"):
        field_of(Outer, "inner.nothing")


def _commands() -> dict[str, object]:
    from repotune import cli

    return {name: getattr(cli, name) for name in ("ingest", "clean", "train", "evaluate", "deploy", "run")}


def test_every_setting_of_every_stage_config_says_what_it_means() -> None:
    from repotune.clean import CleanConfig
    from repotune.deploy import DeployConfig, DeploySettings, S3Access
    from repotune.evaluate import EvaluateConfig, Policy, ScoringConfig
    from repotune.ingest import IngestConfig
    from repotune.pipelines.local import RunConfig
    from repotune.train import TrainConfig
    from repotune.train.recipe import DataSettings, LoraSettings, Recipe, ResourceSettings

    configs = (
        IngestConfig,
        CleanConfig,
        TrainConfig,
        Recipe,
        LoraSettings,
        DataSettings,
        ResourceSettings,
        EvaluateConfig,
        ScoringConfig,
        Policy,
        DeployConfig,
        DeploySettings,
        S3Access,
        RunConfig,
    )
    for config in configs:
        missing = [f.name for f in dataclasses.fields(config) if f.name not in field_docs(config)]
        assert missing == [], f"{config.__name__}: no docstring under {missing}"


def test_the_command_line_shows_each_settings_own_default_and_help() -> None:
    import typer.main

    from repotune.cli import app

    group = typer.main.get_command(app)
    for name, command in _commands().items():
        cls, exposed = command.settings
        params = {param.name: param for param in group.commands[name].params}
        for setting in exposed:
            owner, found, _ = field_of(cls, setting.path)
            param = params[setting.name]
            assert param.help == field_docs(owner)[found.name], (name, setting.path)
            if setting.parse is None and not param.required:
                assert param.default == default_of(found), (name, setting.path)


# The flags and environment variables of the commands README documents, as they were before the
# options were built from the configs: the command-line contract.
# The wiki and tracker sources' settings, on `ingest`, `run` and `submit`.
SERVICE_FLAGS = (
    "--confluence-url",
    "--confluence-comments",
    "--no-confluence-comments",
    "--jira-url",
    "--jql",
    "--notion-url",
)
CONTRACT = {
    "ingest": {
        "source",
        "--output",
        "-o",
        "--include",
        "--ref",
        "--since",
        "--cut",
        "--max-file-bytes",
        "--max-commits",
        "--max-diff-bytes",
        "--github-url",
        *SERVICE_FLAGS,
    },
    "clean": {
        "DIR",
        "--output",
        "-o",
        "--eval-fraction",
        "--dedup-threshold",
        "--redact-pii",
        "--no-redact-pii",
        "--workers",
    },
    "train": {"DIR", "--output", "-o", "--recipe", "--set", "--tracking-uri"},
    "evaluate": {
        "MODEL",
        "DIR",
        "--output",
        "-o",
        "--tracking-uri",
        "--model-name",
        "--line-samples",
        "--fim-samples",
        "--max-blocks",
        "--batch-size",
        "--window-batch-size",
        "--retrieval",
        "--no-retrieval",
        "--index",
        "--base-scores",
        "--min-relative-gain",
        "--require-significance",
        "--no-require-significance",
        "--eval",
    },
    "deploy": {
        "MODEL_URI",
        "--name",
        "--namespace",
        "--runtime",
        "--recipe",
        "--canary",
        "--retrieval",
        "--fim",
        "--min-confidence",
        "--timeout",
        "--service-account",
        "--s3-secret",
        "--s3-endpoint",
        "--s3-region",
        "--artifacts-s3",
        "--dry-run",
        "--no-dry-run",
        "--tracking-uri",
        "--kube-host",
        "--image",
        "--cuda-image",
    },
    "run": {
        "source",
        "--recipe",
        "--ref",
        "--include",
        "--set",
        "--eval",
        "--output",
        "-o",
        "--workdir",
        "--tracking-uri",
        "--artifacts",
        "--local-s3",
        "--no-local-s3",
        "--model-name",
        "--query",
        "--no-query",
        *SERVICE_FLAGS,
    },
    "compile": {"--output", "-o", "--recipe", "--image", "--cuda-image"},
    "submit": {
        "source",
        "--host",
        "--min-confidence",
        "--recipe",
        "--ref",
        "--include",
        "--set",
        "--eval",
        "--artifacts",
        "--model-name",
        "--namespace",
        "--deploy-name",
        *SERVICE_FLAGS,
        "--kfp-namespace",
        "--run-name",
        "--experiment",
        "--service-account",
        "--skip-kfp-version-check",
        "--image",
        "--cuda-image",
    },
}
ENVIRONMENT = {
    ("train", "--tracking-uri"): "MLFLOW_TRACKING_URI",
    ("evaluate", "--tracking-uri"): "MLFLOW_TRACKING_URI",
    ("deploy", "--tracking-uri"): "MLFLOW_TRACKING_URI",
    ("deploy", "--s3-endpoint"): ["S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"],
    ("deploy", "--s3-region"): "AWS_REGION",
    ("deploy", "--artifacts-s3"): "REPOTUNE_MLFLOW_ARTIFACTS_S3",
    ("run", "--workdir"): "REPOTUNE_HOME",
    ("run", "--tracking-uri"): "MLFLOW_TRACKING_URI",
    ("submit", "--host"): "KFP_HOST",
}


def test_the_command_line_contract_is_unchanged() -> None:
    import typer.main

    from repotune.cli import app

    group = typer.main.get_command(app)
    for name, expected in CONTRACT.items():
        flags = set()
        for param in group.commands[name].params:
            if param.name == "help":
                continue
            if param.param_type_name == "argument":
                flags.add(param.metavar or param.name)
            else:
                flags.update(param.opts, param.secondary_opts)
                for opt in param.opts:
                    if (name, opt) in ENVIRONMENT:
                        assert param.envvar == ENVIRONMENT[(name, opt)], (name, opt)
        assert flags == expected, name


def test_defaults_a_user_relies_on() -> None:
    """The defaults README states, now read from the configs."""
    import typer.main

    from repotune.cli import app

    group = typer.main.get_command(app)

    def default(command: str, option: str):
        return next(p.default for p in group.commands[command].params if option in p.opts)

    assert default("ingest", "--max-file-bytes") == 1_000_000
    max_commits = next(p for p in group.commands["ingest"].params if "--max-commits" in p.opts)
    assert max_commits.show_default == "1000"  # taken as text (`all` reads the whole history)
    assert default("clean", "--eval-fraction") == 0.1 and default("clean", "--dedup-threshold") == 0.8
    assert default("evaluate", "--line-samples") == 40 and default("evaluate", "--min-relative-gain") == 0.01
    assert default("evaluate", "--require-significance") is True
    assert default("deploy", "--timeout") == 900.0 and default("deploy", "--s3-secret") == "repotune-s3"
    assert default("run", "--recipe") == "smollm2-135m-cpu" and default("run", "--model-name") == "repotune"
