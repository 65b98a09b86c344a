"""The ``repotune`` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from repotune.clean import CleanConfig
from repotune.decoding import MAX_LINE_REPEAT_PENALTY
from repotune.deploy import DeployConfig, to_yaml
from repotune.errors import RepotuneError
from repotune.evaluate import EvaluateConfig
from repotune.ingest import IngestConfig
from repotune.options import Setting, Values, build, help_of, settings
from repotune.pipelines.config import CompileConfig, ImageSettings, SubmitConfig
from repotune.pipelines.local import RunConfig
from repotune.records import parse_include
from repotune.retrieval.stage import IndexConfig
from repotune.serving.settings import ServeSettings, Switch
from repotune.train import TrainConfig
from repotune.wording import counted

app = typer.Typer(
    help="Fine-tune a language model on one software project's own knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(shown: bool) -> None:
    if shown:
        from repotune import __version__

        print(f"repotune {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune a language model on one software project's own knowledge."""


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


def _max_commits(value: str) -> int | None:
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise RepotuneError(f"--max-commits {value!r}: expected a number of commits, or `all`") from None


def _sources(values: list[str]) -> str | tuple[str, ...]:
    """SOURCE... as a config takes it: one source as text, several as a tuple."""
    return values[0] if len(values) == 1 else tuple(values)


# The settings of the wiki and tracker sources, as `repotune ingest` and `repotune run` take them.
SERVICE_SETTINGS = (
    Setting("confluence_url"),
    Setting("confluence_comments"),
    Setting("jira_url"),
    Setting("jira_jql", ("--jql",)),
    Setting("notion_url"),
)


@app.command()
@settings(
    IngestConfig,
    Setting("source", argument=True, parse=_sources, multiple=True),
    Setting("output", ("-o", "--output")),
    Setting("kinds", ("--include",), parse=parse_include),
    Setting("ref"),
    Setting("since", parse=_parse_since),
    Setting("cut"),
    Setting("max_file_bytes"),
    Setting("max_commits", metavar="N|all", parse=_max_commits),
    Setting("max_diff_bytes"),
    Setting("github_base_url", ("--github-url",)),
    *SERVICE_SETTINGS,
)
def ingest(values: Values) -> None:
    """Read a repository (and its wiki, tracker, ...) into DIR/records.jsonl and DIR/manifest.json."""
    from repotune import ingest

    config = build(IngestConfig, values)
    named = " + ".join(config.sources)
    with _progress() as progress:
        task = progress.add_task(f"ingesting {named}")

        def report(count: int, stats) -> None:
            skipped = sum(stats.skipped.values())
            progress.update(task, description=f"ingesting {named}: {count} records, {skipped} skipped")

        result = ingest.run(config, progress=report, log=say)
    kept = ", ".join(f"{n} {kind}" for kind, n in result.kept.items())
    skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped.items()) or "none"
    commit = f" at {result.commit[:12]}" if result.commit else ""
    say(f"ingested {result.records} records{commit}: {kept}")
    if len(result.sources) > 1:
        for entry in result.sources:
            counts = ", ".join(f"{n} {kind}" for kind, n in entry["kept"].items()) or "nothing"
            linked = entry.get("linked_to_commits")
            fixes = f"; {linked} resolved issues kept with their fixing commits" if linked else ""
            say(f"  {entry['source']}: {entry['records']} records ({counts}){fixes}")
    split = result.split or {}
    if split.get("mode") == "temporal":
        cut = split["cut"]
        say(
            f"cut at {cut['commit'][:12]} ({cut['date']}, {split['rule']}): "
            f"{counted(split['future_lines'], 'line')} in {counted(split['future_files'], 'file')} and "
            f"{counted(split['commits_after_cut'], 'commit')} after it are held out"
        )
    elif split.get("reason"):
        say(f"file split: {split['reason']}")
    if changed := split.get("uncommitted_files"):
        read = (
            "not read: the temporal split trains and scores on commits only (commit them to use them)"
            if split.get("mode") == "temporal"
            else f"read as {'they are' if changed != 1 else 'it is'} on disk, with no revision"
        )
        say(
            f"note: {changed} tracked file{'s' * (changed != 1)} differ{'s' * (changed == 1)} from the "
            f"commit{commit} (uncommitted changes): {read}"
        )
    say(f"skipped: {skipped}")
    say(f"wrote {result.output.records}")


@app.command()
@settings(
    CleanConfig,
    Setting("input", argument=True, metavar="DIR"),
    Setting("output", ("-o", "--output")),
    Setting("split.eval_fraction"),
    Setting("dedup.threshold", ("--dedup-threshold",)),
    Setting("redact_pii"),
    Setting("workers"),
)
def clean(values: Values) -> None:
    """Filter, redact secrets, deduplicate and split into train.jsonl and eval.jsonl."""
    from repotune import clean

    config = build(CleanConfig, values)
    with _progress() as progress:
        task = progress.add_task(f"cleaning {config.input}")
        result = clean.run(
            config, progress=lambda n: progress.update(task, description=f"cleaning: {n} records")
        )
    kept, dropped = result.train_records + result.eval_records, sum(result.dropped.values())
    say(
        f"kept {kept} of {result.input_records} records ({result.train_records} train, "
        f"{result.eval_records} eval); dropped {dropped}; "
        f"redacted {counted(sum(result.redactions.values()), 'secret')}"
    )
    say(f"trained on: {result.split.trained_on}")
    say(f"scored on: {result.split.scored_on}")
    leaks = result.leaks
    say(
        f"leak audit: {leaks.found} of {leaks.target_lines} held-out lines found in training, "
        f"{leaks.set_aside} of them set aside (seen_lines, not scored), "
        f"{leaks.scored_in_training} scored although training has them"
    )
    if result.eval_records == 0:
        say(
            "warning: nothing is held out, so `repotune evaluate` has nothing to score and training "
            "reports no held-out loss; a larger --eval-fraction, or a source with more files or history, "
            "holds some out"
        )
    say(f"wrote {config.output}/train.jsonl, eval.jsonl, stats.json, report.md")


def _parse_overrides(
    pairs: list[str], option: str = "--set", example: str = "data.seq_len=256"
) -> dict[str, object]:
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RepotuneError(f"{option} {pair!r}: expected KEY=VALUE, e.g. {option} {example}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _parse_evaluation(pairs: list[str]) -> dict[str, object]:
    return _parse_overrides(pairs, "--eval", "line_samples=100")


RecipeSettings = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe setting: --set max_steps=10 --set data.seq_len=256."),
]


@app.command()
@settings(
    TrainConfig,
    Setting("data", argument=True, metavar="DIR"),
    Setting("output", ("-o", "--output")),
    Setting("recipe", parse=str),
    Setting("tracking_uri", envvar="MLFLOW_TRACKING_URI"),
)
def train(values: Values, set_: RecipeSettings = None) -> None:
    """Fine-tune the base model on the cleaned data (LoRA, QLoRA or every weight, as the recipe says) and
    write the model."""
    from repotune import train

    values["recipe"], _ = train.resolve_recipe(values.get("recipe"), _parse_overrides(set_ or []))
    config = build(TrainConfig, {**values, "tracking_uri": values["tracking_uri"] or None})
    try:
        result = train.run(config, log=say)
    except KeyboardInterrupt:
        raise _Interrupted(_resume_hint(config.output)) from None
    if (
        os.environ.get("RANK", "0") == "0"
        and result.eval_loss is not None
        and result.base_eval_loss is not None
    ):
        say(f"held-out loss: base {result.base_eval_loss:.4f} -> tuned {result.eval_loss:.4f}")


def _say_verdict_and_table(report: Path) -> None:
    """The evaluation report's verdict, reasons and metric table (it goes on with notes on the method)."""
    for line in report.read_text().splitlines()[2:]:
        if line.startswith("Values are means"):
            break
        say(line)


@app.command()
@settings(
    EvaluateConfig,
    Setting("model", argument=True, metavar="MODEL"),
    Setting("data", argument=True, metavar="DIR"),
    Setting("output", ("-o", "--output")),
    Setting("tracking_uri", envvar="MLFLOW_TRACKING_URI"),
    Setting("model_name"),
    Setting("scoring.line_samples"),
    Setting("scoring.fim_samples"),
    Setting("scoring.max_blocks"),
    Setting("scoring.batch_size"),
    Setting("scoring.window_batch_size"),
    Setting("scoring.retrieval"),
    Setting("index"),
    Setting("base_scores"),
    Setting("policy.min_relative_gain"),
    Setting("policy.require_significance"),
)
def evaluate(
    values: Values,
    eval_: Annotated[
        list[str] | None,
        typer.Option(
            "--eval",
            help="Any other evaluation setting, as `repotune run --eval` takes it, applied after the "
            "options above: --eval context_chars=600 --eval line_repeat_penalty=0 "
            "--eval policy.min_relative_gain=0.05.",
        ),
    ] = None,
) -> None:
    """Score base and candidate, each with and without retrieval, and the champion on held-out data;
    decide; register in MLflow."""
    from repotune import evaluate

    if eval_:
        given = {**values["scoring"], **{f"policy.{key}": value for key, value in values["policy"].items()}}
        merged = {**given, **_parse_evaluation(eval_)}
        values["scoring"], values["policy"] = evaluate.settings_from(merged, "--eval")
    config = build(EvaluateConfig, {**values, "tracking_uri": values["tracking_uri"] or None})
    result = evaluate.run(config, log=say)
    _say_verdict_and_table(result.output.report_md)
    say(f"wrote {config.output}/metrics.json, report.md, report.html")
    if result.registered_version:
        say(f"registered version {result.registered_version} of {config.model_name}")


@app.command()
@settings(
    IndexConfig,
    Setting("data", argument=True, metavar="DIR"),
    Setting("output", ("-o", "--output")),
    Setting("recipe", parse=str),
    Setting("embedding_model", parse=str),
    Setting("revision", parse=str),
)
def index(values: Values) -> None:
    """Build the retrieval index (BM25, with embeddings where asked) of a clean folder's training records."""
    from repotune.retrieval import stage

    result = stage.run(build(IndexConfig, values), log=say)
    if not result.chunks:
        say(f"warning: {result.output} holds no chunks: the training records have no code or doc files")
    dense = f", embeddings of {result.embedding_dimension} dimensions" if result.embedding_dimension else ""
    at = f" at {result.revision[:12]}" if result.revision else ""
    say(f"indexed {result.chunks:,} chunks of {result.files:,} files{at}{dense} in {result.seconds:.1f} s")
    say(f"wrote {result.output}")


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="Folder written by `repotune train` (or a base model), or an s3:// URI.")
    ],
    port: Annotated[int, typer.Option(help="TCP port to listen on.", min=1, max=65535)] = 8080,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on; 0.0.0.0 for every interface (needs REPOTUNE_SERVE_TOKENS or "
            "--insecure-no-auth)."
        ),
    ] = "127.0.0.1",
    model_name: Annotated[
        str | None,
        typer.Option(
            help="Name clients use (default: the registered model's name, else the repository's, else "
            "the model folder's)."
        ),
    ] = None,
    adapter: Annotated[
        str | None, typer.Option(help="LoRA adapter folder or s3:// URI to merge into MODEL (a base model).")
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Most requests generated together in one batch.")
    ] = ServeSettings.max_batch_size,
    max_tokens: Annotated[
        int, typer.Option(help="Cap on max_tokens per request, in tokens.")
    ] = ServeSettings.max_tokens,
    max_queue: Annotated[
        int,
        typer.Option(help="Most generations waiting for a batch; a request that does not fit gets a 429."),
    ] = ServeSettings.max_queue,
    max_generations: Annotated[
        int,
        typer.Option(help="Most generations one request may ask for (prompts x n, or instances); more: 400."),
    ] = ServeSettings.max_generations,
    batch_wait_ms: Annotated[
        float, typer.Option(help="Milliseconds to wait for more requests before starting a batch.")
    ] = ServeSettings.batch_wait_ms,
    turn_tokens: Annotated[
        int,
        typer.Option(
            min=0,
            help="Tokens a running batch writes before it lets requests waiting behind it go first "
            "(its rows resume after them); 0: a batch runs to its end.",
        ),
    ] = ServeSettings.turn_tokens,
    prefix_cache_tokens: Annotated[
        int,
        typer.Option(
            min=0,
            help="Reuse the keys and values of one of the last prompts and answers when a request shares "
            "at least this many tokens with it (an editor asking about the same file): only the rest is "
            "read. 0: read every prompt whole.",
        ),
    ] = ServeSettings.prefix_cache_tokens,
    request_timeout: Annotated[
        float, typer.Option(help="Seconds a request may take, queue wait included; then a 504.")
    ] = ServeSettings.request_timeout_s,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body, in bytes; more get a 413.")
    ] = ServeSettings.max_body_bytes,
    device: Annotated[
        str | None, typer.Option(help="cuda, cuda:N or cpu (default: CUDA when available).")
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve a non-loopback --host without bearer tokens (something in front checks callers).",
        ),
    ] = False,
    retrieval: Annotated[
        Switch,
        typer.Option(
            help="Put context retrieved from MODEL/retrieval/ in front of completion prompts: on, off, or "
            "auto (on when the model was trained with retrieved context); a request's `retrieval` wins."
        ),
    ] = Switch.AUTO,
    fim: Annotated[
        Switch,
        typer.Option(
            help="Answer a request with a suffix as a fill-in-the-middle prompt (on), or from the code "
            "before the cursor alone, to the end of its line (off); auto: FIM when the model has FIM "
            "tokens. Evaluate's decision.fim says which the model does better.",
        ),
    ] = Switch.AUTO,
    line_repeat_penalty: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=MAX_LINE_REPEAT_PENALTY,
            help="Taken off a token's logit for each time a completion wrote it since its last newline, "
            "unless the request sets presence_penalty or frequency_penalty; evaluate scores with the "
            "same default. 0: off.",
        ),
    ] = ServeSettings.line_repeat_penalty,
    retry_line_above: Annotated[
        bool,
        typer.Option(
            help="Decode a greedy completion whose first line writes the line above the cursor again a "
            "second time, from its least certain token (then the next ones, while it copies); evaluate "
            "scores so by default. The first line is streamed once it is judged.",
        ),
    ] = ServeSettings.retry_line_above,
    min_confidence: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="End a greedy completion before its first line whose confidence (the geometric mean of "
            "its tokens' probabilities) is below this, so an editor shows only lines the model was sure "
            "of; a request's min_confidence overrides it. The evaluate report gives the thresholds of "
            "the most confident half and quarter. 0: off.",
        ),
    ] = ServeSettings.min_confidence,
) -> None:
    """Serve MODEL with KServe: OpenAI-compatible /openai/v1 routes and the KServe v1/v2 protocol.

    Bearer tokens come from REPOTUNE_SERVE_TOKENS (comma-separated); health and readiness stay open.
    """
    from repotune.serving.server import serve as run_server
    from repotune.serving.settings import tokens_from_env

    settings = ServeSettings(
        max_batch_size=max_batch_size,
        max_tokens=max_tokens,
        max_queue=max_queue,
        max_generations=max_generations,
        batch_wait_ms=batch_wait_ms,
        turn_tokens=turn_tokens,
        prefix_cache_tokens=prefix_cache_tokens,
        request_timeout_s=request_timeout,
        max_body_bytes=max_body_bytes,
        device=device,
        tokens=() if insecure_no_auth else tokens_from_env(),
        insecure_no_auth=insecure_no_auth,
        retrieval=retrieval.setting,
        fim=fim.setting,
        line_repeat_penalty=line_repeat_penalty,
        retry_line_above=retry_line_above,
        min_confidence=min_confidence,
    )
    run_server(
        model, port=port, host=host, model_name=model_name, adapter=adapter, settings=settings, log=say
    )


def _switch(text: str, flag: str) -> bool | None:
    """``on``, ``off`` or ``auto`` as True, False or None."""
    try:
        return Switch(text.strip().lower()).setting
    except ValueError:
        raise typer.BadParameter(f"{flag} takes on, off or auto, got {text!r}") from None


def _recipe_resources(spec: str):
    from repotune import train

    return train.resolve_recipe(spec)[0].serving_resources()


@app.command()
@settings(
    DeployConfig,
    Setting("model_uri", argument=True, metavar="MODEL_URI"),
    Setting("settings.name"),
    Setting("settings.namespace"),
    Setting("settings.runtime"),
    Setting("settings.resources", ("--recipe",), parse=_recipe_resources),
    Setting("settings.canary_percent", ("--canary",)),
    Setting("settings.retrieval", metavar="on|off|auto", parse=lambda text: _switch(text, "--retrieval")),
    Setting("settings.fim", metavar="on|off|auto", parse=lambda text: _switch(text, "--fim")),
    Setting("settings.min_confidence"),
    Setting("timeout_s", ("--timeout",)),
    Setting("settings.s3.service_account", ("--service-account",)),
    Setting("settings.s3.secret", ("--s3-secret",)),
    Setting("settings.s3.region", ("--s3-region",), envvar="AWS_REGION"),
    Setting("artifacts_s3", envvar="REPOTUNE_MLFLOW_ARTIFACTS_S3"),
    Setting("tracking_uri", envvar="MLFLOW_TRACKING_URI"),
    Setting("kube_host"),
)
def deploy(
    values: Values,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(
            envvar=["S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"],
            help="S3 endpoint URL as the cluster reaches it (unset: AWS). It goes on the ServiceAccount, "
            "which KServe reads only with an IRSA role; otherwise it takes the endpoint from the Secret's "
            "own serving.kserve.io/s3-* annotations, which must name the same store.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the manifests as YAML; touch nothing.")] = False,
    image: Annotated[str | None, typer.Option(help=help_of(ImageSettings, "image"))] = None,
    cuda_image: Annotated[str | None, typer.Option(help=help_of(ImageSettings, "cuda_image"))] = None,
) -> None:
    """Serve a model as a KServe InferenceService; roll back to the previous one if it does not come up."""
    from repotune import deploy, images
    from repotune.deploy import S3Access

    s3 = values["settings"]["s3"]
    values["settings"]["s3"] = S3Access.from_url(s3_endpoint, **{**s3, "region": s3["region"] or None})
    for name in ("tracking_uri", "artifacts_s3"):
        values[name] = values[name] or None
    # the image of the predictor (--runtime repotune) is rendered from the choice
    with images.use(ImageSettings(image, cuda_image).resolve()):
        result = deploy.run(build(DeployConfig, {**values, "apply": not dry_run}), log=say)
    if dry_run:
        typer.echo(to_yaml(list(result.objects)), nl=False)
        return
    assert result.model is not None  # the command line never skips
    say(f"serving {result.model.uri} at {result.url or '(no URL reported)'}")


@app.command()
def api(
    port: Annotated[int, typer.Option(help="TCP port to listen on.", min=1, max=65535)] = 8000,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve without bearer tokens (REPOTUNE_API_TOKENS unset); local use only.",
        ),
    ] = False,
) -> None:
    """Serve the upload API: sources in, pipeline runs started and followed, completions forwarded.

    Settings come from REPOTUNE_API_* variables, listed in repotune/api/settings.py.
    """
    import uvicorn

    from repotune.api.app import create_app
    from repotune.api.settings import ApiSettings

    settings = ApiSettings.from_env(allow_no_auth=insecure_no_auth)
    if not settings.tokens:
        say("warning: serving without authentication (--insecure-no-auth)")
    say(f"store {settings.store}; runs in {settings.work_dir / 'runs'}; database {settings.db_path}")
    networks = ", ".join(str(n) for n in settings.source_networks) or "none (public addresses only)"
    say(f"repository URLs: {', '.join(settings.source_schemes)}; private networks allowed: {networks}")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
@settings(
    RunConfig,
    Setting("source", argument=True, parse=_sources, multiple=True),
    Setting("recipe"),
    Setting("ref"),
    Setting("include"),
    Setting("training", ("--set",), parse=_parse_overrides, multiple=True),
    Setting("evaluation", ("--eval",), parse=_parse_evaluation, multiple=True),
    Setting("run_dir", ("-o", "--output")),
    Setting("workdir", envvar="REPOTUNE_HOME"),
    Setting("tracking_uri", envvar="MLFLOW_TRACKING_URI"),
    Setting("artifacts_root", ("--artifacts",)),
    Setting("local_s3"),
    Setting("model_name"),
    *(replace(setting, path=f"services.{setting.path}") for setting in SERVICE_SETTINGS),
)
def run(
    values: Values,
    query: Annotated[
        bool, typer.Option(help="Serve the trained model on 127.0.0.1 afterwards and ask it one completion.")
    ] = True,
) -> None:
    """Run the whole pipeline on this machine (kfp.local), with the components a cluster runs."""
    from repotune.pipelines.local import run_local
    from repotune.pipelines.status import RunLayout

    config = build(RunConfig, values)
    _, run_dir = config.folders()
    with _terminated_as_exit():
        status = run_local(replace(config, run_dir=run_dir), log=say, console=console)
    say("")
    _say_verdict_and_table(run_dir / str(status.report))
    layout = RunLayout(run_dir)
    say(f"model: {status.model}")
    if status.artifacts:
        say(f"published: {status.artifacts}")
    if status.manifest:
        say(f"InferenceService: {layout.folder / status.manifest}")
    shown = [layout.status, layout.report, layout.report_html, layout.log]
    say(f"run folder: {run_dir} ({', '.join(path.name for path in shown if path.is_file())})")
    from repotune.pipelines.local import served_arm

    options, served = served_arm(status.decision)
    # the server alone follows how the model was trained, which is not always what scored best
    say(f"serve it as evaluated ({served}): repotune serve {status.model} {' '.join(options)}".rstrip())
    if query:
        from repotune.pipelines.local import query_served_model

        query_served_model(
            Path(str(status.model)), run_dir, Path(str(status.dataset)), decision=status.decision, log=say
        )


@contextlib.contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM (a supervisor stopping the run) unwinds like Ctrl-C, so what the run started (the local
    object store, kfp.local's step) is stopped and the status says it failed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("compile")
@settings(
    CompileConfig,
    Setting("output", ("-o", "--output")),
    Setting("recipe"),
    Setting("images.image", ("--image",)),
    Setting("images.cuda_image", ("--cuda-image",)),
)
def compile_(values: Values) -> None:
    """Compile the pipeline to KFP IR YAML for the KFP UI (Upload pipeline) or `kfp` tooling."""
    from repotune.pipelines.submit import compile_pipeline

    config = build(CompileConfig, values)
    say(f"wrote {compile_pipeline(config.output, config.recipe, images=config.images.resolve())}")


@app.command()
@settings(
    SubmitConfig,
    Setting("source", argument=True, parse=_sources, multiple=True),
    Setting("host", envvar="KFP_HOST"),
    Setting("recipe"),
    Setting("ref"),
    Setting("include"),
    Setting("training", ("--set",), parse=_parse_overrides, multiple=True),
    Setting("evaluation", ("--eval",), parse=_parse_evaluation, multiple=True),
    Setting("artifacts_root", ("--artifacts",)),
    Setting("model_name"),
    Setting("namespace"),
    Setting("deploy_name"),
    Setting("min_confidence"),
    Setting("kfp_namespace"),
    Setting("run_name"),
    Setting("experiment"),
    Setting("service_account"),
    Setting("skip_version_check", ("--skip-kfp-version-check",)),
    Setting("images.image", ("--image",)),
    Setting("images.cuda_image", ("--cuda-image",)),
    *(replace(setting, path=f"services.{setting.path}") for setting in SERVICE_SETTINGS),
)
def submit(values: Values) -> None:
    """Start the pipeline on a Kubeflow Pipelines cluster (credentials come from Kubernetes Secrets)."""
    from repotune.pipelines.submit import submit as submit_config

    config = build(SubmitConfig, values)
    run_id, name = submit_config(config)
    account = config.service_account or "KFP's default account"
    say(f"started run {run_id} ({name}) on {config.host} as {account}")


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL", help="Folder written by `repotune train`.")],
    hub: Annotated[str, typer.Option(metavar="ORG/NAME", help="Hugging Face Hub repository to push to.")],
    evaluation: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Folder written by `repotune evaluate`: its results go into the model card."
        ),
    ] = None,
    adapter_only: Annotated[
        bool, typer.Option(help="Push the LoRA adapter and tokenizer instead of the merged model.")
    ] = False,
    public: Annotated[bool, typer.Option(help="Create the repository public (private by default).")] = False,
) -> None:
    """Push a model, its tokenizer and a model card to the Hugging Face Hub (token: HF_TOKEN)."""
    from repotune.export import TOKEN_ENV, ExportConfig, export_model

    config = ExportConfig(
        model_dir=model_dir,
        repo_id=hub,
        token=os.environ.get(TOKEN_ENV) or None,
        evaluation_dir=evaluation,
        adapter_only=adapter_only,
        private=not public,
    )
    result = export_model(config, log=say)
    say(f"pushed to {result.repo_url} ({'public' if public else 'private'}): {result.commit_url}")


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM in `run`), with what to do next: typer itself turns a KeyboardInterrupt into a
    silent exit 130, so a command that has more to say raises this instead."""


def _resume_hint(output: Path) -> str:
    from repotune.train import TrainLayout

    # which of them is complete, the rerun finds out (and says); this only says whether there are any
    saved = any(path.is_dir() for path in TrainLayout(output).checkpoints.glob("checkpoint-*"))
    return "rerun the same command to resume from the newest checkpoint" if saved else ""


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` comes of a KeyboardInterrupt (typer's ``Exit(130)`` is raised from it)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main() -> None:
    try:
        app()
    except RepotuneError as exc:
        from repotune.sources.git import strip_credentials

        say(f"error: {strip_credentials(str(exc))}")  # a URL given with user:password@ is shown without
        sys.exit(2)
    except _Interrupted as exc:
        say(f"interrupted; {exc}" if str(exc) else "interrupted")
        sys.exit(130)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130 and _interrupted(exc):
            say("interrupted")
        raise


if __name__ == "__main__":
    main()
