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
from repotune.serving.settings import ServeSettings

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


def _say_verdict_and_table(report: Path) -> None:
    """The evaluation report's verdict, reasons and metric table (it goes on with notes on the method)."""
    for line in report.read_text().splitlines()[2:]:
        if line.startswith("Values are means"):
            break
        say(line)


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
    _say_verdict_and_table(output / "report.md")
    say(f"wrote {output}/metrics.json, report.md, report.html")
    if result.get("registered_version"):
        say(f"registered version {result['registered_version']} of {model_name}")


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="Folder written by `repotune train` (or a base model), or an s3:// URI.")
    ],
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8080,
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
        request_timeout_s=request_timeout,
        max_body_bytes=max_body_bytes,
        device=device,
        tokens=() if insecure_no_auth else tokens_from_env(),
        insecure_no_auth=insecure_no_auth,
    )
    run_server(
        model, port=port, host=host, model_name=model_name, adapter=adapter, settings=settings, log=say
    )


from repotune.deploy.render import Runtime  # noqa: E402 (light: the deploy command's --runtime choices)


@app.command()
def deploy(
    model_uri: Annotated[
        str,
        typer.Argument(
            metavar="MODEL_URI",
            help="s3://, minio:// (a KFP artifact), models:/NAME@champion or models:/NAME/N.",
        ),
    ],
    name: Annotated[str, typer.Option(help="InferenceService name (lowercase letters, digits, '-').")],
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace to deploy into.")],
    runtime: Annotated[
        Runtime,
        typer.Option(help="huggingface: KServe's runtime (vLLM on GPUs); repotune: `repotune serve`."),
    ] = Runtime.HUGGINGFACE,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Recipe YAML whose `resources` size each replica (default: 2 CPUs, 8Gi)."),
    ] = None,
    canary: Annotated[
        int | None, typer.Option(help="Percent of traffic for the new revision; the previous keeps the rest.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Ready before rolling back to the previous spec.")
    ] = 900.0,
    service_account: Annotated[
        str, typer.Option(help="The predictor's ServiceAccount, which names the S3 credentials Secret.")
    ] = "repotune-serving",
    s3_secret: Annotated[
        str, typer.Option(help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the download.")
    ] = "repotune-s3",
    s3_endpoint: Annotated[
        str | None,
        typer.Option(envvar="S3_ENDPOINT_URL", help="S3 endpoint URL as the cluster reaches it; unset: AWS."),
    ] = None,
    s3_region: Annotated[str | None, typer.Option(envvar="AWS_REGION", help="The bucket's region.")] = None,
    artifacts_s3: Annotated[
        str | None,
        typer.Option(
            envvar="REPOTUNE_MLFLOW_ARTIFACTS_S3",
            help="The MLflow server's --artifacts-destination (s3://...), to map mlflow-artifacts:/ sources.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the manifests as YAML; touch nothing.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI", help="MLflow URI: resolve models:/ URIs, record the endpoint."
        ),
    ] = None,
    kube_host: Annotated[
        str | None, typer.Option(help="Kubernetes API URL (e.g. from `kubectl proxy`); default: kubeconfig.")
    ] = None,
) -> None:
    """Serve a model as a KServe InferenceService; roll back to the previous one if it does not come up."""
    from repotune.deploy import DeploySettings, S3Access, render_manifests, resolve_model_uri, to_yaml
    from repotune.deploy import deploy as run_deploy
    from repotune.train.recipe import ResourceSettings, load_recipe

    settings = DeploySettings(
        name=name,
        namespace=namespace,
        runtime=runtime,
        resources=load_recipe(recipe).resources if recipe is not None else ResourceSettings(),
        canary_percent=canary,
        s3=S3Access.from_url(
            s3_endpoint, service_account=service_account, secret=s3_secret, region=s3_region or None
        ),
    )
    model = resolve_model_uri(model_uri, tracking_uri=tracking_uri or None, artifacts_s3=artifacts_s3 or None)
    if dry_run:
        typer.echo(to_yaml(render_manifests(model, settings)), nl=False)
        return
    from repotune.kube import connect

    result = run_deploy(
        model,
        settings,
        timeout_s=timeout,
        api=connect(kube_host),
        tracking_uri=tracking_uri or None,
        log=say,
    )
    say(f"serving {model.uri} at {result.url or '(no URL reported)'}")


@app.command()
def api(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
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
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
def run(
    source: Annotated[
        str, typer.Argument(help="A local folder or archive, a git URL, or github:OWNER/REPO.")
    ],
    recipe: Annotated[
        str, typer.Option(help="Recipe: a shipped name (configs/NAME.yaml) or a .yaml path.")
    ] = "smollm2-135m-cpu",
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit of a git URL.")] = None,
    include: Annotated[
        str | None, typer.Option(help="Record kinds, comma-separated: code,docs,commits,issues.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe setting: --set max_steps=10.")
    ] = None,
    eval_set: Annotated[
        list[str] | None,
        typer.Option("--eval", help="Evaluation setting: --eval line_samples=30 --eval max_blocks=32."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Run folder for status.json and the report.")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            envvar="REPOTUNE_HOME", help="Artifacts, step cache and local MLflow store (default ~/.repotune)."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI (default: a local store).")
    ] = None,
    artifacts: Annotated[
        str | None, typer.Option(help="s3:// prefix that also receives each stage's outputs.")
    ] = None,
    model_name: Annotated[str, typer.Option(help="Registered model name in MLflow.")] = "repotune",
    query: Annotated[
        bool, typer.Option(help="Serve the trained model on 127.0.0.1 afterwards and ask it one completion.")
    ] = True,
) -> None:
    """Run the whole pipeline on this machine (kfp.local), with the components a cluster runs."""
    from repotune.pipelines.local import default_workdir, run_local

    home = workdir or default_workdir()
    run_dir = output or home / "runs" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    arguments: dict[str, object] = {
        "ref": ref or "",
        "include": include or "",
        "training": _parse_overrides(set_ or []),
        "evaluation": _parse_overrides(eval_set or []),
        "model_name": model_name,
        "deploy_apply": False,  # no cluster here: deploy renders the InferenceService only
        "artifacts_root": artifacts or "",
    }
    status = run_local(
        source, recipe, arguments=arguments, workdir=home, run_dir=run_dir, tracking_uri=tracking_uri, log=say
    )
    _say_verdict_and_table(run_dir / status["report"])
    say("stages: " + ", ".join(f"{name} {entry['state']}" for name, entry in status["stages"].items()))
    say(f"model: {status['model']}")
    say(f"run folder: {run_dir}")
    if query:
        from repotune.pipelines.local import query_served_model

        query_served_model(Path(status["model"]), run_dir, Path(status["dataset"]), log=say)


@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option("-o", "--output", help="IR YAML file to write.")] = Path(
        "pipeline.yaml"
    ),
    recipe: Annotated[
        str, typer.Option(help="Recipe the train step's image and resources come from.")
    ] = "smollm2-135m-cpu",
) -> None:
    """Compile the pipeline to KFP IR YAML for the KFP UI (Upload pipeline) or `kfp` tooling."""
    from repotune.pipelines.submit import compile_pipeline

    say(f"wrote {compile_pipeline(output, recipe)}")


@app.command()
def submit(
    source: Annotated[str, typer.Argument(help="A git URL or github:OWNER/REPO the cluster can reach.")],
    host: Annotated[
        str, typer.Option(envvar="KFP_HOST", help="KFP API endpoint, e.g. http://ml-pipeline:8888.")
    ],
    recipe: Annotated[str, typer.Option(help="Recipe: a shipped name or a .yaml path.")] = "smollm2-135m-cpu",
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe setting: --set max_steps=10.")
    ] = None,
    namespace: Annotated[str, typer.Option(help="Namespace the model is deployed into.")] = "repotune",
    run_name: Annotated[
        str | None, typer.Option(help="Run name (default: repotune-<source>-<time>).")
    ] = None,
    experiment: Annotated[str, typer.Option(help="KFP experiment.")] = "repotune",
) -> None:
    """Start the pipeline on a Kubeflow Pipelines cluster (credentials come from Kubernetes Secrets)."""
    from repotune.pipelines.submit import submit_run
    from repotune.sources.revision import source_slug

    name = run_name or f"repotune-{source_slug(source)}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    arguments = {"source": source, "ref": ref or "", "training": _parse_overrides(set_ or [])}
    arguments["namespace"] = namespace
    run_id = submit_run(host, arguments, name, recipe=recipe, experiment=experiment)
    say(f"started run {run_id} ({name}) on {host}")


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
