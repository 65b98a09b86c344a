"""The ``repotune`` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from repotune.errors import RepotuneError

app = typer.Typer(
    help="Fine-tune a language model on one software project's own knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """Print a plain line (paths and names may contain brackets that are not markup)."""
    console.print(message, markup=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RepotuneError(f"--since {value!r}: expected an ISO date such as 2024-05-01") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def ingest(
    source: Annotated[
        str, typer.Argument(help="Local folder, git URL, archive (.zip/.tar.*) or github:OWNER/REPO.")
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for records.jsonl and manifest.json.")
    ],
    include: Annotated[
        str | None,
        typer.Option(help="Comma-separated kinds to keep: code,docs,commits,issues (default: all)."),
    ] = None,
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit of a git URL.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only issues, PRs and commits since this ISO date (incremental runs).")
    ] = None,
    max_file_bytes: Annotated[int, typer.Option(help="Skip files larger than this many bytes.")] = 1_000_000,
    max_commits: Annotated[int | None, typer.Option(help="Newest commits to read (default 1000).")] = 1000,
    max_diff_bytes: Annotated[
        int, typer.Option(help="Cut each commit's diff after this many characters.")
    ] = 20_000,
    github_url: Annotated[
        str | None, typer.Option(help="GitHub Enterprise API root, e.g. https://ghe.example.com/api/v3.")
    ] = None,
) -> None:
    """Read a repository into DIR/records.jsonl and DIR/manifest.json."""
    from repotune.ingest import IngestConfig, run_ingest
    from repotune.records import parse_include

    config = IngestConfig(
        source=source,
        output=output,
        kinds=parse_include(include),
        ref=ref,
        since=_parse_since(since),
        max_file_bytes=max_file_bytes,
        max_commits=max_commits,
        max_diff_bytes=max_diff_bytes,
        github_base_url=github_url,
    )
    with _progress() as progress:
        task = progress.add_task(f"ingesting {source}")

        def report(count: int, stats) -> None:
            skipped = sum(stats.skipped.values())
            progress.update(task, description=f"ingesting {source}: {count} records, {skipped} skipped")

        manifest = run_ingest(config, progress=report, log=say)
    kept = ", ".join(f"{n} {kind}" for kind, n in manifest["kept"].items())
    skipped = ", ".join(f"{n} {reason}" for reason, n in manifest["skipped"].items()) or "none"
    commit = f" at {manifest['commit'][:12]}" if manifest.get("commit") else ""
    say(f"ingested {manifest['records']} records{commit}: {kept}")
    say(f"skipped: {skipped}")
    say(f"wrote {output / 'records.jsonl'}")


@app.command()
def clean(
    input_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Folder written by `repotune ingest`.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for train/eval JSONL, stats and report.")
    ],
    eval_fraction: Annotated[
        float, typer.Option(help="Share of files and newest commits/issues held out.")
    ] = 0.1,
    dedup_threshold: Annotated[
        float, typer.Option(help="Jaccard similarity (5-gram MinHash) at which records are near duplicates.")
    ] = 0.8,
    redact_pii: Annotated[bool, typer.Option(help="Also redact e-mail and IP addresses.")] = False,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: one per core, at most 4).")
    ] = None,
) -> None:
    """Filter, redact secrets, deduplicate and split into train.jsonl and eval.jsonl."""
    from repotune.clean.dedup import DedupConfig
    from repotune.clean.pipeline import CleanConfig, run_clean
    from repotune.clean.split import SplitConfig

    config = CleanConfig(
        input=input_dir,
        output=output,
        dedup=DedupConfig(threshold=dedup_threshold),
        split=SplitConfig(eval_fraction=eval_fraction),
        redact_pii=redact_pii,
        workers=workers,
    )
    with _progress() as progress:
        task = progress.add_task(f"cleaning {input_dir}")
        stats = run_clean(
            config, progress=lambda n: progress.update(task, description=f"cleaning: {n} records")
        )
    kept, dropped = stats["kept"], stats["dropped"]
    say(
        f"kept {kept['total']} of {stats['input_records']} records "
        f"({kept['train']} train, {kept['eval']} eval); dropped {sum(dropped.values())}; "
        f"redacted {sum(stats['redactions'].values())} secrets"
    )
    say(f"wrote {output}/train.jsonl, eval.jsonl, stats.json, report.md")


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RepotuneError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set data.seq_len=256")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Folder written by `repotune clean`.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the adapter, merged model, summary.")
    ],
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe YAML (see configs/); default: the SmolLM2-135M CPU settings.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe setting: --set max_steps=10 --set data.seq_len=256."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI; tracking is off when unset."),
    ] = None,
) -> None:
    """Fine-tune the base model on the cleaned data (LoRA by default) and write the model."""
    from repotune.train.recipe import load_recipe

    loaded = load_recipe(recipe, _parse_overrides(set_ or []))
    from repotune.train.finetune import run_training

    summary = run_training(data_dir, output, loaded, tracking_uri=tracking_uri or None, log=say)
    if (
        os.environ.get("RANK", "0") == "0"
        and summary["eval_loss"] is not None
        and summary["base_eval_loss"] is not None
    ):
        say(f"held-out loss: base {summary['base_eval_loss']:.4f} -> tuned {summary['eval_loss']:.4f}")


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL", help="Folder written by `repotune train`.")],
    data_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Folder written by `repotune clean`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for metrics.json and the reports.")],
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI", help="MLflow URI: register the candidate, move the champion."
        ),
    ] = None,
    model_name: Annotated[str, typer.Option(help="Registered model name in MLflow.")] = "repotune",
    line_samples: Annotated[int, typer.Option(help="Held-out lines to complete.")] = 40,
    fim_samples: Annotated[int, typer.Option(help="Held-out spans to fill in the middle.")] = 20,
    max_blocks: Annotated[int, typer.Option(help="Held-out blocks scored for perplexity.")] = 64,
    min_relative_gain: Annotated[
        float, typer.Option(help="Relative perplexity gain the candidate needs over the champion (or base).")
    ] = 0.01,
    require_significance: Annotated[
        bool, typer.Option(help="Promote only when the confidence intervals do not overlap.")
    ] = True,
) -> None:
    """Score base, candidate and champion on held-out data; decide; register in MLflow."""
    from repotune.evaluate.decide import Policy
    from repotune.evaluate.run import run_evaluation
    from repotune.evaluate.score import EvalConfig

    result = run_evaluation(
        model_dir,
        data_dir,
        output,
        config=EvalConfig(line_samples=line_samples, fim_samples=fim_samples, max_blocks=max_blocks),
        policy=Policy(min_relative_gain=min_relative_gain, require_significance=require_significance),
        tracking_uri=tracking_uri or None,
        model_name=model_name,
        log=say,
    )
    for line in (output / "report.md").read_text().splitlines()[2:]:
        if line.startswith("Values are means"):
            break
        say(line)
    say(f"wrote {output}/metrics.json, report.md, report.html")
    if result.get("registered_version"):
        say(f"registered version {result['registered_version']} of {model_name}")


def main() -> None:
    try:
        app()
    except RepotuneError as exc:
        say(f"error: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; no partial output was kept")
        sys.exit(130)


if __name__ == "__main__":
    main()
