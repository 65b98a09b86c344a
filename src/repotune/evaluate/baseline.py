"""The base model's arms, scored apart from the candidate: nothing they answer depends on training.

Base and base + retrieval answer the candidate's samples, but their scores depend only on the held-out
data, the scoring settings, the retrieval index and its budget, and the base model's files. The
pipeline scores them in a step of its own (``score-base``) that needs no trained model: on a cluster
it runs beside training, and KFP's cache reuses it for every later run with the same inputs (a new
recipe on the same revision scores only the new candidate). The evaluate stage takes the saved scores
when their key, a hash of everything that decides them, is the key of what it would score; otherwise
it scores the base model itself and says why.

On one machine (``kfp.local``, the demo) the steps run one after the other, so the base model costs
the same wall time as before: what moves is where it is paid, and what a second run reuses.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from repotune.atomic import write_json
from repotune.digest import feed_file, folder_digest
from repotune.errors import RepotuneError
from repotune.evaluate.arms import Arm
from repotune.evaluate.layout import EvaluateLayout

FORMAT_VERSION = 6
"""Bump when scoring changes what a saved score means: saved scores of another version are not used.
2: perplexity reads a sentinel written in a file as text (``generate.tokenized``). 3: each line
completion's confidence is saved beside its scores (``score.CONFIDENCE``). 4: the retrieval arms'
search takes in the file being completed (``RetrievalConfig.current_file``). 5: completions never
decode the file header's token (``transforms.banned_token_ids``). 6: completions stop at chat end-of-turn
tokens too, as served (``decoding.stop_token_ids``)."""
SAME_NUMBERS = ("batch_size", "window_batch_size", "progress_seconds")
"""Scoring settings that change how fast, never what is scored (batched answers equal one-at-a-time
ones: tests/test_evaluate.py), so they are not part of the key."""


def index_identity(index_dir: Path | None, data: Path, index: Any = None) -> str:
    """The retrieval arms' index, as a hash: the files of ``index_dir``, or, where the index ``index``
    is built from the clean folder ``data``, its training records (and its embedding model's files)."""
    from repotune.clean.layout import CleanLayout

    if index_dir is not None:
        return folder_digest(index_dir)
    digest = hashlib.sha256()
    feed_file(digest, CleanLayout(data).train)
    embedder = getattr(getattr(index, "config", None), "embedding_model", None)
    if embedder is not None:
        digest.update(folder_digest(Path(embedder)).encode())
    return "built from " + digest.hexdigest()


def base_key(samples: Any, scoring: Any, base_dir: Path, budget: int, index: str | None) -> str:
    """What decides the base arms' scores, hashed: the samples drawn, the scoring settings that change
    numbers, the base model's files, and the retrieval budget and ``index_identity`` (None: no
    retrieval arm)."""
    settings = {k: v for k, v in asdict(scoring).items() if k not in SAME_NUMBERS}
    parts = {
        "format": FORMAT_VERSION,
        "samples": hashlib.sha256(repr(samples).encode()).hexdigest(),
        "scoring": settings,
        "base": folder_digest(base_dir),
        "budget": budget if index is not None else None,
        "index": index,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save(folder: Path, key: str, base_model: str, scored: dict[Arm, Any], seconds: float) -> Path:
    """Write the base arms' scores (``ArmScores``) under ``key`` to ``folder``'s ``base_scores.json``
    (``EvaluateLayout.base_scores``: the score-base step's folder, or an evaluation's)."""
    from repotune.evaluate.score import metric_to_dict

    folder.mkdir(parents=True, exist_ok=True)
    path = EvaluateLayout(folder).base_scores
    write_json(path, {
        "key": key,
        "base_model": base_model,
        "seconds": seconds,
        "arms": {
            arm.key: {
                "metrics": {name: metric_to_dict(m) for name, m in result.metrics.items()},
                "per_sample": result.per_sample,
                "answers": result.answers,
            }
            for arm, result in scored.items()
        },
    })  # fmt: skip
    return path


def score(
    output: Path,
    key: str,
    base_model: str,
    base_dir: Path,
    samples: Any,
    scoring: Any,
    index: Any | None,
    budget: int,
    log: Callable[[str], None],
    *,
    started: float | None = None,
) -> dict[Arm, Any]:
    """Score base and base + retrieval (``index``: a loaded index, or None) and save them under ``key``
    into ``output``; the seconds saved count from ``started`` (a ``time.monotonic()``), else from now."""
    from repotune.evaluate.score import score_model

    started = time.monotonic() if started is None else started
    scored, _ = score_model("base", base_dir, samples, scoring, index, budget, False, log)
    save(Path(output), key, base_model, scored, round(time.monotonic() - started, 1))
    return scored


def load(folder: Path, key: str) -> tuple[dict[Arm, Any] | None, str]:
    """The base arms saved in ``folder`` when they were scored under ``key``, and what was found: None
    and the reason when they cannot be used."""
    from repotune.evaluate.score import ArmScores, metric_from_dict

    path = EvaluateLayout(Path(folder)).base_scores
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except (OSError, ValueError) as err:
        return None, f"{path} is unreadable ({err})"
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None, (
            f"{path} was scored on other samples, settings, base model or index than this evaluation's"
        )
    scored = {
        Arm.from_key(name): ArmScores(
            {metric: metric_from_dict(metric, values) for metric, values in arm["metrics"].items()},
            arm["per_sample"],
            arm["answers"],
        )
        for name, arm in saved["arms"].items()
    }
    return scored, f"scored there in {saved.get('seconds', 0):.0f} s"


def copy(folder: Path, output: Path) -> None:
    """Copy the base scores saved in ``folder`` into ``output`` (nothing when it is the same folder)."""
    import shutil

    source, target = EvaluateLayout(Path(folder)).base_scores, EvaluateLayout(Path(output)).base_scores
    if target.exists() and source.samefile(target):
        return
    Path(output).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def run(
    data: Path,
    output: Path,
    base_model: str,
    *,
    scoring: Any,
    recipe: dict[str, Any] | None = None,
    index: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Score base and base + retrieval on the held-out records of the clean folder ``data`` and save
    them to ``output``. ``recipe`` (as ``train_summary.json`` holds it) is the candidate's: the
    budget of retrieved context its retrieval arm gets is the base's too. Scores ``output`` already
    holds under the same key are kept, not scored again. The path written."""
    from repotune.clean.layout import CleanLayout
    from repotune.evaluate.samples import draw_samples
    from repotune.evaluate.score import context_budget, load_or_build_index
    from repotune.models import resolve_base_model
    from repotune.records import read_records

    eval_path = CleanLayout(data).eval
    if not eval_path.is_file():
        raise RepotuneError(f"{data} has no {eval_path.name}; run `repotune clean` into it first")
    started = time.monotonic()
    samples = draw_samples(list(read_records(eval_path)), scoring)
    base_dir = resolve_base_model(base_model)
    loaded = load_or_build_index(index, data, log, recipe) if scoring.retrieval else None
    budget = context_budget({"recipe": recipe or {}}, loaded)
    key = base_key(
        samples, scoring, base_dir, budget, index_identity(index, data, loaded) if loaded else None
    )
    path = EvaluateLayout(Path(output)).base_scores
    if load(Path(output), key)[0] is not None:
        log(f"base arms: {path} holds them already, for the same key")
        return path
    log(f"scoring the base model ({base_dir}) apart from the candidate")
    score(output, key, base_model, base_dir, samples, scoring, loaded, budget, log, started=started)
    log(f"base arms scored in {time.monotonic() - started:.0f} s")
    return path


def summary(path: Path) -> str:
    """One line on the saved scores at ``path``: each arm's line edit similarity, and the time taken."""
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    shown = []
    for name, arm in saved["arms"].items():
        metric = arm["metrics"].get("line_edit_similarity")
        if metric is not None:
            shown.append(f"{Arm.from_key(name).label} {metric['value']:.3f}")
    scored = f"line edit similarity {', '.join(shown)}; " if shown else ""
    return f"{saved['base_model']}: {scored}scored in {saved['seconds']:.0f} s"
