"""Does tuning help on a project's next code? The four arms on real projects, trained on one release and
scored on what the next release added.

This machine cannot reach GitHub, but the package registries keep every release of a package's source,
and two releases make a real "before and after": the benchmark builds a git repository whose first
commit is release X's source tree and whose second is release Y's (dated as released), ingests it with
``cut`` at the first commit (training sees release X, its tree and the commit that made it; evaluation
scores the lines release Y added, with the file as it stood in Y as context), cleans, trains with a
recipe, and evaluates base, base + retrieval, candidate and candidate + retrieval on the same samples.

    .venv/bin/python benchmarks/quality.py                               # itsdangerous, the CPU demo recipe
    .venv/bin/python benchmarks/quality.py --projects all --samples 200
    .venv/bin/python benchmarks/quality.py --projects semver --set data.retrieval_rate=0.5 --steps 60
    python3 benchmarks/quality.py --reuse-data --recipe qwen2.5-coder-0.5b-gpu --samples 200  # a GPU host

It prints, per project: what was trained on and scored on, the four arms side by side (line exact
match and line edit similarity with 95% intervals and n, the share of completions that start like a
diff line or a file header, FIM for the models that have FIM tokens), the perplexity of the added code
under base and candidate, the paired relative change of the best candidate arm against base +
retrieval, and each stage's wall time; then the targets of the quality issue as PASS/MISS. Nothing is
asserted. Downloads, repositories and run folders stay under ``.bench/quality`` (gitignored); the
packages are the registries' own source archives (``pip download --no-binary :all:``, ``npm pack``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench" / "quality"


@dataclass(frozen=True)
class Release:
    version: str
    date: str
    """Release date (ISO, from the registry's upload time, to the day): the commit's author date."""


@dataclass(frozen=True)
class Project:
    name: str
    registry: str
    """`pypi` (sdist from `pip download --no-binary :all:`) or `npm` (`npm pack`)."""
    language: str
    before: Release
    """The release trained on (the cut)."""
    after: Release
    """The release whose added lines are scored."""


# Chosen for pure source, a few thousand lines, and a few hundred code lines added between the two
# releases (counted with `diff -rN` over .py/.js/.ts files): attrs 1,318, click 899, itsdangerous 314,
# semver 295, commander 177.
_TABLE = (  # name, registry, language, (version, date) trained on, (version, date) scored on
    ("itsdangerous", "pypi", "python", ("2.1.2", "2022-03-24"), ("2.2.0", "2024-04-16")),
    ("attrs", "pypi", "python", ("23.1.0", "2023-04-16"), ("23.2.0", "2023-12-31")),
    ("click", "pypi", "python", ("8.1.3", "2022-04-28"), ("8.1.7", "2023-08-18")),
    ("semver", "npm", "javascript", ("7.3.8", "2022-10-04"), ("7.6.0", "2024-01-31")),
    ("commander", "npm", "javascript", ("10.0.1", "2023-04-15"), ("11.1.0", "2023-10-13")),
)
PROJECTS = {
    name: Project(name, registry, language, Release(*before), Release(*after))
    for name, registry, language, before, after in _TABLE
}
DEFAULT_PROJECTS = ("itsdangerous",)

# The quality issue's targets (issue 15): what the deployed arm must show on every benchmark project.
TARGET_RELATIVE_EDIT_SIMILARITY = 0.30
TARGET_PERPLEXITY_CUT = 0.20
TARGET_MIN_PAIRED_SAMPLES = 200
TARGET_FORGETTING = 0.05


def fetch(project: Project, release: Release, cache: Path = CACHE) -> Path:
    """The release's source tree, downloaded and unpacked once under ``cache``."""
    tree = cache / "src" / f"{project.name}-{release.version}"
    if tree.is_dir():
        return tree
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if project.registry == "pypi":
        spec = f"{project.name}=={release.version}"
        harness.run_checked(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             spec, "-d", str(downloads)], stdout=sys.stderr,
        )  # fmt: skip
        archives = sorted(downloads.glob(f"{project.name}-{release.version}.tar.gz"))
    else:
        harness.run_checked(
            ["npm", "pack", f"{project.name}@{release.version}", "--silent", "--pack-destination",
             str(downloads)], stdout=sys.stderr,
        )  # fmt: skip
        archives = sorted(downloads.glob(f"{project.name}-{release.version}.tgz"))
    if not archives:
        raise SystemExit(f"{project.name} {release.version}: the registry gave no source archive")
    unpack(archives[0], tree)
    return tree


def unpack(archive: Path, dest: Path) -> None:
    """Extract a source archive's single top folder (``pkg-1.0/``, npm's ``package/``) as ``dest``."""
    scratch = dest.with_name(dest.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")
    tops = list(scratch.iterdir())
    (tops[0] if len(tops) == 1 and tops[0].is_dir() else scratch).rename(dest.with_name(dest.name + ".tree"))
    shutil.rmtree(scratch, ignore_errors=True)
    dest.with_name(dest.name + ".tree").rename(dest)


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    )
    return result.stdout.strip()


def build_history(repo: Path, releases: Sequence[tuple[Path, str, str]]) -> list[str]:
    """A git repository at ``repo`` with one commit per ``(tree, message, iso_date)``, oldest first.

    Each commit's tree is exactly that folder's files (what the previous one had and this one lacks is
    deleted), authored and committed at the date given. Returns the commit SHAs in order. An existing
    ``repo`` is replaced.
    """
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    _git(repo, "init", "--quiet", "--initial-branch=main")
    shas = []
    for tree, message, date in releases:
        for entry in repo.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        shutil.copytree(tree, repo, dirs_exist_ok=True, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "release",
            "GIT_AUTHOR_EMAIL": "release@example.invalid",
            "GIT_COMMITTER_NAME": "release",
            "GIT_COMMITTER_EMAIL": "release@example.invalid",
            "GIT_AUTHOR_DATE": f"{date}T12:00:00+00:00",
            "GIT_COMMITTER_DATE": f"{date}T12:00:00+00:00",
        }
        _git(repo, "add", "--all", "--force", ".", env=env)
        _git(repo, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", message, env=env)
        shas.append(_git(repo, "rev-parse", "HEAD"))
    return shas


def project_repo(project: Project, cache: Path = CACHE) -> tuple[Path, str]:
    """The two-commit repository of ``project`` (built once) and the SHA of its cut (the first commit)."""
    repo = cache / "repos" / f"{project.name}-{project.before.version}-{project.after.version}"
    if (repo / ".git").is_dir():
        commits = _git(repo, "rev-list", "--reverse", "HEAD").split()
        if len(commits) == 2:
            return repo, commits[0]
    trees = [
        (fetch(project, release, cache), f"{project.name} {release.version}", release.date)
        for release in (project.before, project.after)
    ]
    return repo, build_history(repo, trees)[0]


def kind_shares(train_jsonl: Path) -> dict[str, float]:
    """Share of training characters by record kind (a proxy for tokens)."""
    chars: dict[str, int] = {}
    with train_jsonl.open() as handle:
        for line in handle:
            record = json.loads(line)
            chars[record["kind"]] = chars.get(record["kind"], 0) + len(record["content"])
    total = sum(chars.values()) or 1
    return {kind: count / total for kind, count in sorted(chars.items(), key=lambda kv: -kv[1])}


def relative_change(arm: Sequence[float], reference: Sequence[float]) -> dict[str, float] | None:
    """mean(arm) / mean(reference) - 1 over paired samples, with its paired bootstrap 95% interval."""
    import numpy as np

    from repotune.evaluate.metrics import bootstrap_ci

    if len(arm) != len(reference) or len(arm) < 2 or sum(reference) == 0:
        return None
    rows = np.column_stack([np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)])

    def change(sample: np.ndarray) -> float:
        base = sample[:, 1].mean()
        return float(sample[:, 0].mean() / base - 1.0) if base > 0 else 0.0

    low, high = bootstrap_ci(rows, statistic=change, seed=0)
    return {"value": change(rows), "ci_low": low, "ci_high": high, "n": len(arm)}


def per_sample_lines(completions: Path) -> dict[str, dict[str, list[float]]]:
    """Each arm's line edit similarity, exact match and confidence per sample, from the stage's
    completions.jsonl."""
    from repotune.evaluate.metrics import edit_similarity, exact_match

    scores: dict[str, dict[str, list[float]]] = {}
    with completions.open() as handle:
        for line in handle:
            row = json.loads(line)
            if row["task"] != "line":
                continue
            for arm, answer in row["answers"].items():
                mine = scores.setdefault(arm, {"edit_similarity": [], "exact_match": [], "confidence": []})
                mine["edit_similarity"].append(edit_similarity(answer, row["expected"]))
                mine["exact_match"].append(exact_match(answer, row["expected"]))
                mine["confidence"].append(row.get("confidence", {}).get(arm, 0.0))
    return scores


def stage_timer(project: Project, times: dict[str, float]) -> Callable[[str, Callable[[], Any]], Any]:
    """``timed(stage, call)``: logs the stage, runs ``call`` and records its wall time in ``times``."""

    def timed(stage: str, call: Callable[[], Any]) -> Any:
        harness.log(f"[{project.name}] {stage}")
        started = time.monotonic()
        result = call()
        times[stage] = time.monotonic() - started
        return result

    return timed


def prepare_data(project: Project, work: Path, reuse: bool, timed: Any, stale: Sequence[str] = ()) -> Path:
    """The project's cleaned data in ``work/clean``: ingested at release X with the lines of release Y
    held out, or, with ``reuse``, what an earlier run left there (``stale`` folders of ``work`` are
    removed then; otherwise ``work`` starts empty). ``timed(stage, call)`` runs and times a stage."""
    import repotune.clean
    import repotune.ingest
    from repotune.clean import CleanConfig, CleanLayout
    from repotune.ingest import IngestConfig

    clean = work / "clean"
    layout = CleanLayout(clean)
    if reuse and all(path.is_file() for path in (layout.train, layout.eval, layout.stats)):
        harness.log(f"[{project.name}] reusing the cleaned data in {clean}")
        for folder in stale:
            shutil.rmtree(work / folder, ignore_errors=True)
        return clean
    repo, cut = project_repo(project)
    shutil.rmtree(work, ignore_errors=True)
    timed(
        "ingest",
        lambda: repotune.ingest.run(IngestConfig(source=str(repo), output=work / "ingest", cut=cut)),
    )
    timed("clean", lambda: repotune.clean.run(CleanConfig(input=work / "ingest", output=clean)))
    return clean


def run_project(project: Project, args: argparse.Namespace, recipe: Any) -> dict[str, Any]:
    import repotune.evaluate
    import repotune.train
    from repotune.clean import CleanLayout
    from repotune.config import to_dict
    from repotune.evaluate import EvaluateConfig
    from repotune.evaluate.settings import ScoringConfig
    from repotune.train import TrainConfig

    work = args.work / project.name
    times: dict[str, float] = {}
    timed = stage_timer(project, times)

    clean = prepare_data(project, work, args.reuse_data, timed, stale=("model", "eval"))
    layout = CleanLayout(clean)
    kept = json.loads(layout.stats.read_text())["kept"]  # what the clean stage kept, either way
    trained = timed(
        "train",
        lambda: repotune.train.run(
            TrainConfig(data=clean, output=work / "model", recipe=recipe, keep_checkpoints=False),
            log=harness.log,
        ),
    )
    scoring = ScoringConfig(
        line_samples=args.samples,
        fim_samples=args.fim_samples,
        commit_samples=0,
        forgetting_files=args.forgetting_files,
        max_blocks=args.perplexity_windows,
    )
    # The base model's arms do not depend on the training run: scored as the pipeline's score-base step
    # does, and with --reuse-data kept for every later recipe with the same base model, retrieval
    # budget and scoring settings (score_base returns at once when the saved key is the same).
    base = work / "base"
    timed(
        "score-base",
        lambda: repotune.evaluate.score_base(
            clean, base, recipe.base_model, scoring=scoring, recipe=to_dict(recipe), log=harness.log
        ),
    )
    evaluated = timed(
        "evaluate",
        lambda: repotune.evaluate.run(
            EvaluateConfig(
                model=work / "model", data=clean, output=work / "eval", scoring=scoring, base_scores=base
            ),
            log=harness.log,
        ),
    )
    summary = json.loads(trained.output.summary.read_text())
    return {
        "project": project.name,
        "language": project.language,
        "trained_on": f"{project.name} {project.before.version} ({project.before.date})",
        "scored_on": f"lines {project.after.version} added ({project.after.date})",
        "train_records": kept["train"],
        "eval_records": kept["eval"],
        "kind_shares": kind_shares(layout.train),
        "tokens_by_kind": summary["data"].get("tokens_by_kind"),
        "split": evaluated.split,
        "steps": trained.steps,
        "train_blocks": summary["data"]["train_blocks"],
        "epochs_seen": trained.steps
        * recipe.micro_batch_size
        * recipe.gradient_accumulation_steps
        / max(summary["data"]["train_blocks"], 1),
        "eval_loss": [trained.base_eval_loss, trained.eval_loss],
        "models": evaluated.models_as_dicts(),
        "decision": {"promote": evaluated.promote, "arm": evaluated.arm.key if evaluated.arm else None},
        "per_sample": per_sample_lines(evaluated.output.completions),
        "seconds": times,
    }


ARMS = ("base", "base_retrieval", "candidate", "candidate_retrieval")
SHOWN = (
    ("line_exact_match", "line exact match"),
    ("line_edit_similarity", "line edit similarity"),
    ("line_diff_marker_share", "diff-marker share"),
    ("fim_exact_match", "FIM exact match"),
    ("fim_edit_similarity", "FIM edit similarity"),
    ("fim_prefix_only_exact_match", "FIM EM, prefix alone"),
    ("fim_prefix_only_edit_similarity", "FIM ES, prefix alone"),
)


def _cell(metric: dict[str, Any] | None) -> str:
    if metric is None:
        return "-"
    value = f"{metric['value']:.3f}"
    if metric.get("ci_low") is not None:
        value += f" [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"
    return f"{value} n={metric['n']}"


def best_candidate(result: dict[str, Any]) -> str:
    """The candidate arm with the higher line edit similarity: what would be deployed."""
    models = result["models"]
    scored = [
        arm for arm in ("candidate", "candidate_retrieval") if "line_edit_similarity" in models.get(arm, {})
    ]
    return (
        max(scored, key=lambda arm: models[arm]["line_edit_similarity"]["value"]) if scored else "candidate"
    )


def targets(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets for one project: (name, met, what was measured); None where not measured."""
    models, per_sample = result["models"], result["per_sample"]
    deployed = best_candidate(result)
    rows: list[tuple[str, bool | None, str]] = []
    mine, theirs = per_sample.get(deployed, {}), per_sample.get("base_retrieval", {})
    change = relative_change(mine.get("edit_similarity", []), theirs.get("edit_similarity", []))
    n = len(mine.get("edit_similarity", []))
    if change is not None:
        met = change["ci_low"] >= TARGET_RELATIVE_EDIT_SIMILARITY and n >= TARGET_MIN_PAIRED_SAMPLES
        rows.append((
            f"{deployed} vs base_retrieval: line edit similarity +{TARGET_RELATIVE_EDIT_SIMILARITY:.0%} "
            f"relative (95% CI low end), n >= {TARGET_MIN_PAIRED_SAMPLES}",
            met, f"{change['value']:+.1%} [{change['ci_low']:+.1%}, {change['ci_high']:+.1%}], n={n}",
        ))  # fmt: skip
    exact = models.get(deployed, {}).get("line_exact_match")
    reference = models.get("base_retrieval", {}).get("line_exact_match")
    if exact is not None and reference is not None:
        rows.append((
            f"{deployed} line exact match > 0 and > base_retrieval",
            exact["value"] > 0 and exact["value"] > reference["value"],
            f"{exact['value']:.3f} vs {reference['value']:.3f}",
        ))  # fmt: skip
    ppl_base = models.get("base", {}).get("perplexity")
    ppl_cand = models.get("candidate", {}).get("perplexity")
    if ppl_base and ppl_cand:
        cut = 1 - ppl_cand["value"] / ppl_base["value"]
        rows.append((f"candidate cuts perplexity of added code by >= {TARGET_PERPLEXITY_CUT:.0%}",
                     cut >= TARGET_PERPLEXITY_CUT,
                     f"{ppl_base['value']:.2f} -> {ppl_cand['value']:.2f} ({-cut:+.1%})"))  # fmt: skip
    marks = models.get(deployed, {}).get("line_diff_marker_share")
    base_marks = models.get("base", {}).get("line_diff_marker_share")
    if marks is not None and base_marks is not None:
        rows.append(("diff-marker share no more than base's", marks["value"] <= base_marks["value"],
                     f"{marks['value']:.3f} vs base {base_marks['value']:.3f}"))  # fmt: skip
    forget_base = models.get("base", {}).get("forgetting_perplexity")
    forget_cand = models.get("candidate", {}).get("forgetting_perplexity")
    if forget_base and forget_cand:
        change_f = forget_cand["value"] / forget_base["value"] - 1
        measured = f"{forget_base['value']:.2f} -> {forget_cand['value']:.2f} ({change_f:+.1%})"
        rows.append((f"general-code perplexity within {TARGET_FORGETTING:.0%} of base",
                     change_f <= TARGET_FORGETTING, measured))  # fmt: skip
    return rows


def print_project(result: dict[str, Any]) -> None:
    models = result["models"]
    print(f"\n## {result['project']} ({result['language']})")
    print(f"trained on {result['trained_on']}; scored on the {result['scored_on']}")
    shares = ", ".join(f"{kind} {share:.0%}" for kind, share in result["kind_shares"].items())
    tokens = result.get("tokens_by_kind") or {}
    mix = ", ".join(f"{kind} {count / max(sum(tokens.values()), 1):.0%}" for kind, count in tokens.items())
    print(
        f"training records {result['train_records']} (characters: {shares}; trained tokens after "
        f"kind weights: {mix or 'not recorded'}); held-out records "
        f"{result['eval_records']}; {result['steps']} steps over {result['train_blocks']} blocks "
        f"(about {result['epochs_seen']:.2g} epochs)"
    )
    if result["eval_loss"][0] is not None and result["eval_loss"][1] is not None:
        print(f"held-out loss {result['eval_loss'][0]:.3f} -> {result['eval_loss'][1]:.3f}")
    rows = [["metric", *ARMS]]
    for key, label in SHOWN:
        if any(key in models.get(arm, {}) for arm in ARMS):
            rows.append([label, *(_cell(models.get(arm, {}).get(key)) for arm in ARMS)])
    ppl = [models.get(arm, {}).get("perplexity") for arm in ("base", "candidate")]
    rows.append(["perplexity of added code", _cell(ppl[0]), "", _cell(ppl[1]), ""])
    forgetting = [models.get(arm, {}).get("forgetting_perplexity") for arm in ("base", "candidate")]
    if any(forgetting):
        rows.append(["general-code perplexity", _cell(forgetting[0]), "", _cell(forgetting[1]), ""])
    harness.print_table(rows[0], rows[1:])
    seconds = result["seconds"]
    ratio = seconds["evaluate"] / seconds["train"] if seconds.get("train") else float("nan")
    print(
        "wall time: "
        + ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items())
        + f"; evaluate/train {ratio:.2f} (score-base runs beside train on a cluster, and once per data)"
    )
    decision = result["decision"]
    print(f"decision: {'promote' if decision['promote'] else 'do not promote'} (arm {decision['arm']})")
    print_confidence(result["project"], [result])


def print_confidence(title: str, results: list[dict[str, Any]]) -> None:
    """Line exact match and edit similarity of every completion, the most confident half and quarter,
    per arm, over the lines of ``results`` together (one threshold for all, as a server would use)."""
    from repotune.evaluate.report import confidence_table
    from repotune.evaluate.score import CONFIDENCE, confidence_summary

    pooled: dict[str, dict[str, list[float]]] = {}
    for result in results:
        for arm, scores in result["per_sample"].items():
            if not scores.get("confidence"):
                continue
            mine = pooled.setdefault(
                arm, {CONFIDENCE: [], "line_exact_match": [], "line_edit_similarity": []}
            )
            mine[CONFIDENCE] += scores["confidence"]
            mine["line_exact_match"] += scores["exact_match"]
            mine["line_edit_similarity"] += scores["edit_similarity"]
    table = confidence_table({"confidence": confidence_summary(pooled)})
    if table:
        lines = len(next(iter(pooled.values()))[CONFIDENCE])
        print(f"\n{title}, {lines} lines: if only confident completions were shown (exact match / edit")
        print("similarity of those shown; the first column: how often a right line was more confident)")
        print("\n".join(table))


def print_targets(results: list[dict[str, Any]]) -> None:
    if len(results) > 1:
        print("\n## Every project's lines together")
        print_confidence("all projects", results)
    print("\n## Targets (issue 15), per project")
    for result in results:
        for name, met, measured in targets(result):
            verdict = "PASS" if met else "MISS"
            print(f"{verdict}  {result['project']}: {name}: {measured}")


COMPARED_ARMS = ("candidate", "candidate_retrieval")


def compare_runs(mine: dict[str, Any], theirs: dict[str, Any]) -> list[dict[str, Any]]:
    """Two ``--json`` files of runs on the same samples (another recipe with ``--reuse-data``), paired
    sample by sample: per project and candidate arm, and over every project's samples together, the
    relative change of ``mine`` against ``theirs`` in line edit similarity with its paired 95%
    interval. Projects whose base arms did not score the same (other samples, other settings) are
    refused, as pairing them would compare different lines."""
    ours = {result["project"]: result for result in mine["results"]}
    pairs = []
    for other in theirs["results"]:
        name, result = other["project"], ours.get(other["project"])
        if result is None:
            continue
        for base in ("base", "base_retrieval"):
            if scored_differently(result["per_sample"].get(base), other["per_sample"].get(base)):
                raise SystemExit(
                    f"{name}: the two runs' {base} arms scored differently: not the same samples"
                )
        for arm in COMPARED_ARMS:
            a = result["per_sample"].get(arm, {}).get("edit_similarity", [])
            b = other["per_sample"].get(arm, {}).get("edit_similarity", [])
            pairs.append((name, arm, a, b))
    return paired_rows(pairs)


def paired_rows(pairs: Iterable[tuple[str, str, list[float], list[float]]]) -> list[dict[str, Any]]:
    """``(project, arm, mine, theirs)`` scores as rows (``_compared``), then one row an arm over every
    project's samples together (project ``all``); unpaired scores make no row."""
    rows: list[dict[str, Any]] = []
    pooled: dict[str, tuple[list[float], list[float]]] = {}
    for project, arm, mine, theirs in pairs:
        if (row := _compared(project, arm, mine, theirs)) is not None:
            rows.append(row)
            pooled.setdefault(arm, ([], []))
            pooled[arm][0].extend(mine)
            pooled[arm][1].extend(theirs)
    return rows + [row for arm, (a, b) in pooled.items() if (row := _compared("all", arm, a, b)) is not None]


CHOICES = {
    "confident: candidate | + retrieval": ("candidate_retrieval", "candidate"),
    "confident: any of four": ("candidate_retrieval", "candidate", "base_retrieval", "base"),
}
"""Arms chosen between line by line, by the confidence of their answers (``chosen_by_confidence``): the
candidate's two prompts, which one server can ask together, and all four arms."""


def chosen_by_confidence(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``--json`` file's arms, and answers chosen line by line as the more confident of several arms'
    (``CHOICES``; the first arm on a tie), and, as the ceiling of any choice between the candidate's
    two answers, the better of them on each line: per project and over every project's lines
    together, line edit similarity against base + retrieval, paired."""
    pairs = []
    for result in run["results"]:
        per_sample = result["per_sample"]
        reference = per_sample.get("base_retrieval", {}).get("edit_similarity", [])
        scored = {arm: scores["edit_similarity"] for arm, scores in per_sample.items()}
        for name, arms in CHOICES.items():
            if all(per_sample.get(arm, {}).get("confidence") for arm in arms):
                lines = zip(*(per_sample[arm]["confidence"] for arm in arms), strict=True)
                picked = [max(range(len(arms)), key=lambda k, c=c: c[k]) for c in lines]
                scored[name] = [per_sample[arms[k]]["edit_similarity"][i] for i, k in enumerate(picked)]
        if all(arm in scored for arm in COMPARED_ARMS):
            scored["better of the candidate's two"] = [
                max(pair) for pair in zip(*(scored[arm] for arm in COMPARED_ARMS), strict=True)
            ]
        pairs += [(result["project"], name, values, reference) for name, values in scored.items()]
    return paired_rows(pairs)


def scored_differently(mine: dict[str, list[float]] | None, theirs: dict[str, list[float]] | None) -> bool:
    """Whether two runs' per-sample scores of an arm differ (their confidences, which a run before
    they were recorded lacks, aside)."""
    scores = ("edit_similarity", "exact_match")
    return {k: (mine or {}).get(k) for k in scores} != {k: (theirs or {}).get(k) for k in scores}


def _compared(project: str, arm: str, mine: list[float], theirs: list[float]) -> dict[str, Any] | None:
    """One row of ``compare_runs``: both means and the paired relative change; None when unpaired."""
    change = relative_change(mine, theirs)
    if change is None:
        return None
    means = {"mine": sum(mine) / len(mine), "theirs": sum(theirs) / len(theirs)}
    return {"project": project, "arm": arm, **means, **change}


def print_comparison(rows: list[dict[str, Any]], title: str, *, theirs: str = "theirs") -> None:
    print(f"line edit similarity, {title} (paired, 95% bootstrap interval)")
    width = max([20, *(len(row["arm"]) for row in rows)])
    print(f"{'project':<14} {'arm':<{width}} {'mine':>6} {theirs:>6}  change")
    for row in rows:
        print(
            f"{row['project']:<14} {row['arm']:<{width}} {row['mine']:6.3f} {row['theirs']:6.3f}  "
            f"{row['value']:+.1%} [{row['ci_low']:+.1%}, {row['ci_high']:+.1%}] n={row['n']}"
        )


def cpu_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--projects", default=",".join(DEFAULT_PROJECTS),
        help=f"comma list of {', '.join(PROJECTS)}, or all (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=40, help="line samples per project (default 40)")
    parser.add_argument("--fim-samples", type=int, default=20, help="FIM samples (default 20)")
    parser.add_argument(
        "--perplexity-windows", type=int, default=32, help="windows of added code for perplexity (default 32)"
    )
    parser.add_argument("--forgetting-files", type=int, default=8, help="general code files (default 8)")
    parser.add_argument(
        "--recipe", default="smollm2-135m-cpu", help="shipped name or .yaml (default %(default)s)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="recipe override, YAML value (data.retrieval_rate=0.5); repeatable",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=CACHE / "runs", help="run folders (default %(default)s)")
    parser.add_argument(
        "--reuse-data", action="store_true",
        help="keep each project's ingested and cleaned data under --work when it is there: another recipe on "
        "the same data, or a machine without git or the registries (a GPU host) given the data made here",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("MINE", "THEIRS"),
        help="run nothing: compare two --json files of runs on the same samples, arm by arm, paired",
    )  # fmt: skip
    parser.add_argument(
        "--choose", type=Path, metavar="RUN",
        help="run nothing: a --json file's arms, and answers chosen line by line by confidence, against "
        "base + retrieval",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.compare is not None:
        mine, theirs = (json.loads(path.read_text()) for path in args.compare)
        print_comparison(compare_runs(mine, theirs), f"{args.compare[0]} against {args.compare[1]}")
        return 0
    if args.choose is not None:
        rows = chosen_by_confidence(json.loads(args.choose.read_text()))
        print_comparison(rows, f"{args.choose}, each arm against base + retrieval", theirs="b+ret")
        return 0

    import yaml

    from repotune.train.recipe import resolve_recipe

    names = list(PROJECTS) if args.projects == "all" else [n.strip() for n in args.projects.split(",")]
    unknown = [name for name in names if name not in PROJECTS]
    if unknown:
        parser.error(f"unknown project(s) {', '.join(unknown)}; choose from {', '.join(PROJECTS)}")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    recipe, _ = resolve_recipe(args.recipe, overrides)
    print(f"# quality: recipe {args.recipe} {overrides or ''}; {args.samples} line samples per project")
    print(f"# {json.dumps(harness.machine())}; {cpu_load()} at start")
    results = []
    for name in names:
        result = run_project(PROJECTS[name], args, recipe)
        result["load_after"] = cpu_load()
        results.append(result)
        print_project(result)
        print(f"({result['load_after']} after this project)")
        sys.stdout.flush()
        if args.json is not None:  # after each project: a run stopped part-way keeps what it finished
            args.json.parent.mkdir(parents=True, exist_ok=True)
            everything = {"recipe": args.recipe, "overrides": overrides, "results": results}
            args.json.write_text(json.dumps(everything, indent=1, default=str))
    print_targets(results)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
