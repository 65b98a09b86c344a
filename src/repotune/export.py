"""``repotune export``: publish a trained model to the Hugging Face Hub, with its evaluation in the card.

What goes up, through ``huggingface_hub``'s own API (``HfApi.create_repo``, ``HfApi.upload_folder``):

- the merged model (config.json, safetensors, generation config), its tokenizer and, in ``adapter/``,
  the LoRA adapter; or, with ``adapter_only``, the adapter's files alone at the top of the repository
  with the tokenizer (it may hold added FIM tokens the base model lacks);
- ``README.md``: a model card whose YAML metadata carries the evaluation in the Hub's ``model-index``
  format (``model_index``) and the training data's source and commit, and whose text says how to load it.

The retrieval index the pipeline ships in the model folder (``retrieval/``) goes along into private
repositories, so that a model pulled from the Hub serves with retrieval as it was evaluated; it holds
the repository's files verbatim, so a public export leaves it out. Checkpoints, caches and
``train_summary.json`` (local paths, bucket names) stay behind. Repositories are
created private unless ``private=False``; an existing public repository is refused unless the export
asked for a public one, so private code never lands in public by accident. The token is the caller's
(the command line reads ``HF_TOKEN``; on a cluster, a Kubernetes Secret). ``huggingface_hub`` talks to
``HF_ENDPOINT`` (default https://huggingface.co) unless ``endpoint`` is given.

This module was tested against a local stand-in for the Hub's HTTP API (``tests/hub_fake.py``), not
against huggingface.co.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError

SUMMARY_FILE = "train_summary.json"
METRICS_FILE = "metrics.json"
ADAPTER_DIR = "adapter"
CARD_FILE = "README.md"
TOKEN_ENV = "HF_TOKEN"

# The Hub's rule for repository names: letters, digits, '-', '_', '.'; no '--' or '..'; at most 96.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Base models repotune knows by an alias, by the Hub repository they come from. smollm2-135m is built
# from the Q4_1 GGUF of this model, so its weights are a dequantized copy, not the original bytes.
BASE_MODEL_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Files never published: training state, caches, and what the card replaces (PEFT writes its own
# README.md into the adapter folder).
EXCLUDED = ("checkpoints", ".*", SUMMARY_FILE, CARD_FILE)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
TASK = "text-generation"
# Metric types as the model card shows them; unknown metric names are shown with '_' as ' '.
METRIC_NAMES = {
    "perplexity": "perplexity on held-out text",
    "forgetting_perplexity": "perplexity on general code (forgetting)",
    "line_exact_match": "line completion exact match",
    "line_edit_similarity": "line completion edit similarity",
    "fim_exact_match": "fill-in-the-middle exact match",
    "fim_edit_similarity": "fill-in-the-middle edit similarity",
    "commit_chrf": "commit message chrF",
    "commit_rouge_l": "commit message ROUGE-L",
}


@dataclass(frozen=True)
class ExportConfig:
    """One push of a model folder to one Hub repository."""

    model_dir: Path
    """A folder written by ``repotune train`` (config.json, weights, tokenizer, ``train_summary.json``)."""
    repo_id: str
    """The Hub repository, ``ORG/NAME`` (created when missing)."""
    token: str | None
    """A Hugging Face access token with write access to ``repo_id`` (``HF_TOKEN``)."""
    evaluation_dir: Path | None = None
    """A folder written by ``repotune evaluate`` whose ``metrics.json`` goes into the card; None: no
    evaluation results in the card."""
    adapter_only: bool = False
    """Push the LoRA adapter (``MODEL/adapter``) and the tokenizer instead of the merged model."""
    private: bool = True
    """Create the repository private (and refuse to push to an existing public one)."""
    endpoint: str | None = None
    """The Hub's URL; None: ``huggingface_hub``'s own (``HF_ENDPOINT``, else https://huggingface.co)."""
    commit_message: str | None = None
    """The commit's title on the Hub; None: one naming the repository, commit and what was pushed."""

    def __post_init__(self) -> None:
        if not _REPO_ID.match(self.repo_id) or ".." in self.repo_id or "--" in self.repo_id:
            raise RepotuneError(
                f"--hub {self.repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.'; up to 96 each)"
            )
        if not self.model_dir.exists():
            raise RepotuneError(f"{self.model_dir} does not exist; give the folder `repotune train` wrote")
        if not (self.model_dir / "config.json").is_file() or not (self.model_dir / SUMMARY_FILE).is_file():
            raise RepotuneError(
                f"{self.model_dir} is not a folder written by `repotune train` (config.json and "
                f"{SUMMARY_FILE} expected)"
            )
        if self.adapter_only and not (self.model_dir / ADAPTER_DIR / "adapter_config.json").is_file():
            raise RepotuneError(
                f"--adapter-only: {self.model_dir} has no LoRA adapter ({ADAPTER_DIR}/adapter_config.json); "
                "a full fine-tune has only the merged model"
            )
        if self.evaluation_dir is not None and not (self.evaluation_dir / METRICS_FILE).is_file():
            raise RepotuneError(
                f"--evaluation {self.evaluation_dir}: no {METRICS_FILE}; give a folder written by "
                "`repotune evaluate`"
            )
        # last: a wrong folder or option is worth saying before a missing token
        if not self.token:
            raise RepotuneError(f"set {TOKEN_ENV} to a Hugging Face access token with write access")


@dataclass(frozen=True)
class ExportResult:
    repo_url: str
    """The repository's page."""
    commit_url: str
    """The commit that holds this push."""
    files: tuple[str, ...]
    """Every file pushed, as paths in the repository."""


def export_model(config: ExportConfig, log: Callable[[str], None] = print) -> ExportResult:
    """Create ``config.repo_id`` if needed and push the model, tokenizer and card in one commit."""
    from huggingface_hub import HfApi

    summary = json.loads((config.model_dir / SUMMARY_FILE).read_text())
    evaluation = (
        json.loads((config.evaluation_dir / METRICS_FILE).read_text())
        if config.evaluation_dir is not None
        else None
    )
    api = HfApi(endpoint=config.endpoint, token=config.token)
    what = "the LoRA adapter" if config.adapter_only else "the merged model"
    try:
        repo = api.create_repo(config.repo_id, private=config.private, exist_ok=True)
        info = api.model_info(config.repo_id)
        if info.private is False and config.private:
            raise RepotuneError(
                f"{config.repo_id} exists and is public; pass --public to push there, or choose another name"
            )
        with tempfile.TemporaryDirectory(prefix="repotune-export-") as tmp:
            staged = stage_folder(config, summary, evaluation, Path(tmp) / "repo")
            files = tuple(sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()))
            log(f"pushing {what} ({len(files)} files, {_size(staged)}) to {repo}")
            commit = api.upload_folder(
                repo_id=config.repo_id,
                folder_path=staged,
                commit_message=config.commit_message or _commit_message(summary, config.adapter_only),
            )
    except Exception as err:
        failure = _hub_failure(err, config.repo_id, api.endpoint)
        if failure is None:
            raise
        raise failure from err
    return ExportResult(repo_url=str(repo), commit_url=commit.commit_url, files=files)


def export_if_promoted(
    model_dir: Path,
    evaluation_dir: Path,
    hub_repo: str | None,
    *,
    adapter_only: bool = False,
    endpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult | None:
    """The optional pipeline step after evaluation: push the candidate to ``hub_repo`` (private, token
    from ``HF_TOKEN``) when its evaluation promoted it. Returns None, pushing nothing, when ``hub_repo``
    is unset or empty (the pipeline parameter's "off") or the candidate was not promoted."""
    if not hub_repo:
        return None
    evaluation = json.loads((Path(evaluation_dir) / METRICS_FILE).read_text())
    if not (evaluation.get("decision") or {}).get("promote"):
        log(f"not exported to {hub_repo}: the candidate was not promoted")
        return None
    config = ExportConfig(
        model_dir=Path(model_dir),
        repo_id=hub_repo,
        token=os.environ.get(TOKEN_ENV) or None,
        evaluation_dir=Path(evaluation_dir),
        adapter_only=adapter_only,
        endpoint=endpoint,
    )
    return export_model(config, log)


def stage_folder(
    config: ExportConfig, summary: Mapping[str, Any], evaluation: Mapping[str, Any] | None, dest: Path
) -> Path:
    """The repository's files at ``dest``: model or adapter, tokenizer, card (hard links where the file
    system allows: no bytes copied)."""
    from repotune.retrieval.shipped import MODEL_INDEX_DIR

    model_dir = config.model_dir
    excluded = EXCLUDED if config.private else (*EXCLUDED, MODEL_INDEX_DIR)
    if config.adapter_only:
        dest.mkdir(parents=True)
        for path in sorted((model_dir / ADAPTER_DIR).iterdir()):
            if path.is_file() and not any(fnmatch.fnmatch(path.name, pattern) for pattern in EXCLUDED):
                _link(path, dest / path.name)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                _link(model_dir / name, dest / name)
        if config.private and (model_dir / MODEL_INDEX_DIR).is_dir():
            shutil.copytree(model_dir / MODEL_INDEX_DIR, dest / MODEL_INDEX_DIR, copy_function=_link)
        adapter_config = dest / "adapter_config.json"
    else:
        shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns(*excluded), copy_function=_link)
        adapter_config = dest / ADAPTER_DIR / "adapter_config.json"
    base = base_model_hub_id(str(summary.get("base_model")))
    if base is not None and adapter_config.is_file():
        # PEFT loads the base named here; the training machine's local folder means nothing on the Hub.
        settings = json.loads(adapter_config.read_text())
        settings["base_model_name_or_path"] = base
        adapter_config.unlink()  # a hard link to the trained model's own file: write a new one
        adapter_config.write_text(json.dumps(settings, indent=2) + "\n")
    card = model_card(config.repo_id, summary, evaluation, adapter_only=config.adapter_only)
    (dest / CARD_FILE).unlink(missing_ok=True)
    (dest / CARD_FILE).write_text(str(card))
    return dest


def model_card(
    repo_id: str, summary: Mapping[str, Any], evaluation: Mapping[str, Any] | None, *, adapter_only: bool
) -> Any:
    """The ``huggingface_hub.ModelCard`` of the export: metadata (base model, library, the evaluation
    as ``model-index``, the data's provenance under ``repotune``) and a text a person reads."""
    from huggingface_hub import ModelCard, ModelCardData

    data = summary.get("data") or {}
    base = base_model_hub_id(str(summary.get("base_model")))
    provenance = {
        "source": data.get("dataset.source"),
        "commit": data.get("dataset.commit"),
        "dataset_hash": summary.get("dataset_hash"),
        "base_model": summary.get("base_model"),
        "method": summary.get("method"),
        "steps": summary.get("steps"),
    }
    card_data = ModelCardData(
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag=TASK,
        base_model=base,
        tags=["repotune", "code", str(summary.get("method"))],
        model_name=repo_id if evaluation else None,
        eval_results=eval_results(evaluation, data) if evaluation else None,
        repotune={key: value for key, value in provenance.items() if value is not None},
    )
    return ModelCard(
        f"---\n{card_data.to_yaml()}\n---\n\n{_card_text(repo_id, summary, evaluation, adapter_only)}"
    )


def eval_results(evaluation: Mapping[str, Any], data: Mapping[str, Any]) -> list[Any]:
    """Every arm of the evaluation (``metrics.json``'s ``models``: ``base``, ``candidate``,
    ``base+retrieval``, ...) as ``EvalResult``s: one model-index result per arm, told apart by
    ``dataset.config`` (the arm's name), on the held-out split of the repository at its commit."""
    from huggingface_hub import EvalResult

    source = str(data.get("dataset.source") or "repository")
    commit = data.get("dataset.commit")
    dataset_type = _dataset_type(source)
    dataset_name = f"{dataset_type} held-out code" + (f" at {commit[:7]}" if commit else "")
    results = []
    for arm, metrics in sorted((evaluation.get("models") or {}).items()):
        for metric, values in sorted(metrics.items()):
            if values.get("value") is None:
                continue
            results.append(
                EvalResult(
                    task_type=TASK,
                    task_name="Code completion on the repository's held-out code",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config=arm,
                    dataset_split="eval",
                    dataset_revision=commit,
                    metric_type=metric,
                    metric_value=round(float(values["value"]), 4),
                    metric_name=f"{METRIC_NAMES.get(metric, metric.replace('_', ' '))} ({arm})",
                )
            )
    return results


def base_model_hub_id(base_model: str) -> str | None:
    """The Hub id of a recipe's base model: an alias's source model, a Hub id as is, else None."""
    if base_model in BASE_MODEL_HUB_IDS:
        return BASE_MODEL_HUB_IDS[base_model]
    if _HUB_MODEL_ID.match(base_model) and not Path(base_model).exists() and not base_model.startswith("s3:"):
        return base_model
    return None


def _card_text(
    repo_id: str, summary: Mapping[str, Any], evaluation: Mapping[str, Any] | None, adapter_only: bool
) -> str:
    data = summary.get("data") or {}
    source, commit = data.get("dataset.source", "an unnamed source"), data.get("dataset.commit")
    base = base_model_hub_id(str(summary.get("base_model")))
    lines = [
        f"# {repo_id.split('/', 1)[1]}",
        "",
        f"`{summary.get('base_model')}` fine-tuned ({summary.get('method')}) by repotune on `{source}`"
        + (f" at commit `{commit}`" if commit else "")
        + f": {data.get('train_records', '?')} records, {summary.get('steps', '?')} steps.",
        "",
    ]
    if str(summary.get("base_model")) in BASE_MODEL_HUB_IDS:
        lines += [
            f"The base weights are a dequantized copy of {base}'s Q4_1 GGUF, not the original safetensors.",
            "",
        ]
    lines += ["## Use", "", "```python"]
    if adapter_only:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            f'base = AutoModelForCausalLM.from_pretrained("{base or "<the base model>"}")',
            "base.resize_token_embeddings(len(tokenizer))  # the tokenizer may add FIM tokens",
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        ]
    lines += ["```", ""]
    if not adapter_only:
        lines += ["The LoRA adapter alone is in `adapter/`.", ""] if summary.get("method") != "full" else []
    if evaluation:
        lines += _evaluation_table(evaluation)
    return "\n".join(lines) + "\n"


def _evaluation_table(evaluation: Mapping[str, Any]) -> list[str]:
    models = evaluation.get("models") or {}
    arms = sorted(models)
    metrics = sorted({name for scores in models.values() for name in scores})
    lines = [
        "## Evaluation",
        "",
        "Scored by `repotune evaluate` on held-out code of the same repository (code the model never saw "
        "in training), each arm on the same samples; 95% confidence intervals in brackets. `candidate` is "
        "this model. In the metadata's `model-index`, each arm is one result and `dataset.config` names it.",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    for metric in metrics:
        cells = []
        for arm in arms:
            value = models[arm].get(metric) or {}
            if value.get("value") is None:
                cells.append("–")
                continue
            text = f"{value['value']:.4g}"
            if value.get("ci_low") is not None and value.get("ci_high") is not None:
                text += f" [{value['ci_low']:.4g}, {value['ci_high']:.4g}]"
            cells.append(f"{text} (n={value.get('n', '?')})")
        lines.append(f"| {METRIC_NAMES.get(metric, metric)} | " + " | ".join(cells) + " |")
    decision = evaluation.get("decision") or {}
    if decision.get("reasons"):
        lines += ["", f"Decision: {decision['reasons'][0]}"]
    return [*lines, ""]


def _commit_message(summary: Mapping[str, Any], adapter_only: bool) -> str:
    data = summary.get("data") or {}
    what = "LoRA adapter" if adapter_only else "model"
    commit = data.get("dataset.commit")
    return f"repotune: {what} trained on {data.get('dataset.source', 'a repository')}" + (
        f" at {commit[:7]}" if commit else ""
    )


def _dataset_type(source: str) -> str:
    """``org/repo`` for a GitHub or git URL source, else the source's last path component."""
    if source.startswith("github:"):
        return source.removeprefix("github:")
    parts = [p for p in re.split(r"[/:]", source.removesuffix(".git")) if p]
    return "/".join(parts[-2:]) if "://" in source or source.startswith("git@") else (parts or [source])[-1]


def _link(src: Path | str, dest: Path | str) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _size(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


def _hub_failure(err: BaseException, repo_id: str, endpoint: str) -> RepotuneError | None:
    """A one-line error for what the Hub refused or a network that failed, found anywhere in the
    exception's chain (LFS uploads wrap them in RuntimeError); None for anything else (a bug)."""
    from huggingface_hub.errors import HfHubHTTPError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, HfHubHTTPError):
            status = seen.response.status_code if seen.response is not None else None
            hint = f"; check {TOKEN_ENV} (it needs write access)" if status in (401, 403) else ""
            return RepotuneError(f"the Hub refused the export to {repo_id}: {_first_line(seen)}{hint}")
        # httpx's (huggingface_hub 1.x) or httpx2's (2.x) connection and timeout errors.
        if any(cls.__name__ == "TransportError" for cls in type(seen).__mro__):
            return RepotuneError(f"cannot reach the Hugging Face Hub at {endpoint} ({_first_line(seen)})")
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
