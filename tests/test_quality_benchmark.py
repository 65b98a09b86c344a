"""benchmarks/quality.py's pure parts: the release history it builds and the numbers it derives.

The benchmark itself (downloads, training, evaluation) is run by hand, never by the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@contextlib.contextmanager
def _benchmark(script: str) -> Iterator[Any]:
    """``benchmarks/SCRIPT`` loaded as a module, with its folder on the path as when run as a script
    (the benchmarks import their siblings, `harness` and `quality`, by name)."""
    name = f"{Path(script).stem}_benchmark"
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        for loaded in (name, "quality", "harness"):
            sys.modules.pop(loaded, None)


@pytest.fixture(scope="module")
def quality():
    with _benchmark("quality.py") as module:
        yield module


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_two_releases_become_two_dated_commits_with_exact_trees(quality, tmp_path: Path) -> None:
    before, after = tmp_path / "pkg-1.0", tmp_path / "pkg-1.1"
    (before / "pkg").mkdir(parents=True)
    (before / "pkg" / "core.py").write_text("def one():\n    return 1\n")
    (before / "pkg" / "old.py").write_text("GONE = True\n")
    (after / "pkg").mkdir(parents=True)
    (after / "pkg" / "core.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    (after / "pkg" / "new.py").write_text("NEW = True\n")

    repo = tmp_path / "repo"
    shas = quality.build_history(repo, [(before, "pkg 1.0", "2022-03-24"), (after, "pkg 1.1", "2024-04-16")])

    assert len(shas) == 2 and _git(repo, "rev-list", "--reverse", "HEAD").split() == shas
    assert _git(repo, "ls-tree", "-r", "--name-only", shas[0]).split() == ["pkg/core.py", "pkg/old.py"]
    assert _git(repo, "ls-tree", "-r", "--name-only", shas[1]).split() == ["pkg/core.py", "pkg/new.py"]
    assert _git(repo, "log", "-1", "--format=%aI %cI %s", shas[0]).split() == [
        "2022-03-24T12:00:00+00:00", "2022-03-24T12:00:00+00:00", "pkg", "1.0",
    ]  # fmt: skip
    added = _git(repo, "diff", "--numstat", shas[0], shas[1], "--", "pkg/core.py").split()
    assert added[:2] == ["4", "0"]

    again = quality.build_history(repo, [(before, "pkg 1.0", "2022-03-24")])  # an existing repo is replaced
    assert _git(repo, "rev-list", "HEAD").split() == again


def test_unpack_takes_the_archive_top_folder(quality, tmp_path: Path) -> None:
    source = tmp_path / "package"
    source.mkdir()
    (source / "index.js").write_text("module.exports = 1\n")
    archive = tmp_path / "pkg-1.0.0.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="package")  # npm pack's layout
    quality.unpack(archive, tmp_path / "out" / "pkg-1.0.0")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pkg-1.0.0"]
    assert (tmp_path / "out" / "pkg-1.0.0" / "index.js").read_text() == "module.exports = 1\n"


def test_relative_change_is_paired_and_honest_at_zero(quality) -> None:
    change = quality.relative_change([0.6, 0.4, 0.5, 0.5], [0.5, 0.5, 0.25, 0.25])
    assert change["value"] == pytest.approx(2.0 / 1.5 - 1)
    assert change["ci_low"] <= change["value"] <= change["ci_high"] and change["n"] == 4
    assert quality.relative_change([0.1, 0.2], [0.0, 0.0]) is None  # no relative change from zero


def _run(*projects: tuple[str, list[float], list[float]]) -> dict[str, Any]:
    """A ``--json`` file's shape: per project, the base arms' and the two candidate arms' scores."""
    results = [
        {"project": name, "per_sample": {
            "base": {"edit_similarity": [0.5, 0.5, 0.5, 0.5]},
            "base_retrieval": {"edit_similarity": [0.6, 0.4, 0.6, 0.4]},
            "candidate": {"edit_similarity": candidate},
            "candidate_retrieval": {"edit_similarity": with_retrieval},
        }}
        for name, candidate, with_retrieval in projects
    ]  # fmt: skip
    return {"results": results}


def test_two_recipes_are_compared_sample_by_sample_and_over_every_project(quality, capsys) -> None:
    mine = _run(("a", [0.6, 0.6, 0.6, 0.6], [0.5, 0.5, 0.5, 0.5]), ("b", [1.0, 1.0, 0.0, 0.0], [0.2] * 4))
    theirs = _run(("a", [0.3, 0.3, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5]), ("b", [0.5] * 4, [0.4] * 4))
    rows = {(row["project"], row["arm"]): row for row in quality.compare_runs(mine, theirs)}
    assert rows["a", "candidate"]["value"] == pytest.approx(1.0)  # 0.6 against 0.3: twice as good
    assert rows["a", "candidate_retrieval"]["value"] == pytest.approx(0.0)
    assert rows["b", "candidate"]["value"] == pytest.approx(0.0)
    # over both projects' 8 samples: (0.6 * 4 + 2.0) / (0.3 * 4 + 2.0) - 1
    assert rows["all", "candidate"]["value"] == pytest.approx(4.4 / 3.2 - 1)
    assert rows["all", "candidate"]["n"] == 8
    assert rows["all", "candidate_retrieval"]["value"] == pytest.approx(2.8 / 3.6 - 1)
    low, high = rows["all", "candidate"]["ci_low"], rows["all", "candidate"]["ci_high"]
    assert low < rows["all", "candidate"]["value"] < high
    quality.print_comparison(list(rows.values()), "full.json against lora.json")
    assert "all            candidate             0.550  0.400  +37.5% [" in capsys.readouterr().out

    other_samples = _run(("a", [0.3] * 4, [0.5] * 4))
    other_samples["results"][0]["per_sample"]["base"]["edit_similarity"] = [0.4] * 4
    with pytest.raises(SystemExit, match="a: the two runs' base arms scored differently"):
        quality.compare_runs(mine, other_samples)


def test_answers_are_chosen_line_by_line_by_the_more_confident_arm(quality, capsys) -> None:
    run = _run(("a", [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]))
    confidences = {
        "base": [0.1, 0.1, 0.1, 0.1],
        "base_retrieval": [0.2, 0.95, 0.2, 0.2],
        "candidate": [0.9, 0.9, 0.1, 0.1],
        "candidate_retrieval": [0.5, 0.5, 0.5, 0.9],
    }
    for arm, values in confidences.items():
        run["results"][0]["per_sample"][arm]["confidence"] = values
    rows = {(row["project"], row["arm"]): row for row in quality.chosen_by_confidence(run)}
    # the candidate on lines 1 and 2 (right, then wrong), with retrieval on 3 and 4 (wrong, then right)
    assert rows["a", "confident: candidate | + retrieval"]["mine"] == pytest.approx(0.5)
    # line 2 goes to base + retrieval (0.4), the most confident of the four there
    assert rows["a", "confident: any of four"]["mine"] == pytest.approx((1.0 + 0.4 + 0.0 + 1.0) / 4)
    assert rows["a", "better of the candidate's two"]["mine"] == pytest.approx(1.0)  # the ceiling
    assert rows["a", "better of the candidate's two"]["value"] == pytest.approx(1.0)  # twice base + retrieval
    assert rows["all", "candidate"]["n"] == 4 and rows["a", "base_retrieval"]["value"] == 0.0
    quality.print_comparison(
        list(rows.values()), "run.json, each arm against base + retrieval", theirs="b+ret"
    )
    out = capsys.readouterr().out
    assert "a              confident: candidate | + retrieval  0.500  0.500  +0.0% [" in out

    del run["results"][0]["per_sample"]["base"]["confidence"]  # a run from before confidences were kept
    arms = {row["arm"] for row in quality.chosen_by_confidence(run)}
    assert "confident: any of four" not in arms and "confident: candidate | + retrieval" in arms


def test_every_project_names_two_ordered_releases_and_a_non_python_one(quality) -> None:
    projects = quality.PROJECTS.values()
    assert len(projects) >= 4
    assert any(project.language != "python" for project in projects)
    assert all(project.before.date < project.after.date for project in projects)


@pytest.fixture()
def retrieval_quality():
    with _benchmark("retrieval_quality.py") as module:
        yield module


def test_the_budget_sweep_reads_its_budgets_and_prints_each_against_the_serving_default(
    retrieval_quality, capsys
) -> None:
    assert retrieval_quality._budgets("128, 256,512") == [128, 256, 512]
    for bad in ("", "0,128", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"budgets must be|not a comma list"):
            retrieval_quality._budgets(bad)

    def metric(value: float) -> dict:
        return {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100}

    result = {
        "project": "demo", "language": "python", "chunks": 1234, "samples": 100, "reference": "512",
        "with_context": {"128": 30, "512": 100},
        "metrics": {
            "none": {"line_exact_match": metric(0.1), "line_edit_similarity": metric(0.4)},
            "128": {"line_exact_match": metric(0.1), "line_edit_similarity": metric(0.42)},
            "512": {"line_exact_match": metric(0.12), "line_edit_similarity": metric(0.44)},
        },
        "vs_reference": {
            "none": {"value": -0.091, "ci_low": -0.15, "ci_high": -0.03, "n": 100},
            "128": None,
        },
        "seconds": {"score": 1.0},
    }  # fmt: skip
    retrieval_quality.print_budgets(result)
    out = capsys.readouterr().out
    assert "1,234 chunks, 100 lines; line edit similarity paired against 512 tokens" in out
    assert (
        "| none | 0.100 [0.050, 0.150] n=100 | 0.400 [0.350, 0.450] n=100 | -9.1% [-15.0%, -3.0%] n=100 | 0 |"
        in out
    )
    assert "| up to 128 tokens |" in out and "| - | 30 |" in out
    assert "| up to 512 tokens |" in out and "| (reference) | 100 |" in out


def test_the_code_only_comparison_prints_its_index_and_the_diff_marker_share(
    retrieval_quality, capsys
) -> None:
    def metric(value: float) -> dict:
        return {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100}

    arms = {"base": (0.4, 0.0), "bm25": (0.44, 0.03), "fused": (0.45, 0.0)}
    change = {"value": 0.023, "ci_low": -0.01, "ci_high": 0.05, "n": 100}
    result = {
        "project": "demo", "language": "python", "embedding_model": "None", "second": "BM25 over code only",
        "chunks": 1234, "samples": 100, "with_context": {"bm25": 98, "fused": 95},
        "metrics": {
            name: {"line_exact_match": metric(0.1), "line_edit_similarity": metric(es),
                   "line_diff_marker_share": metric(markers)}
            for name, (es, markers) in arms.items()
        },
        "fused_vs_bm25": change, "fused_vs_base": change, "bm25_vs_base": change, "seconds": {"score": 1.0},
    }  # fmt: skip
    retrieval_quality.print_project(result)
    out = capsys.readouterr().out
    assert "## demo (python): 1,234 chunks, 100 lines, BM25 over code only\n" in out
    assert "| | base | base + BM25 | base + BM25 over code only |" in out
    assert "| diff-marker share | 0.000 [-0.050, 0.050] n=100 | 0.030 [-0.020, 0.080] n=100 |" in out
    assert "prompts with context: BM25 98, BM25 over code only 95 of 100" in out
    assert "BM25 over code only vs BM25 +2.3% [-1.0%, +5.0%] n=100" in out


def test_the_second_index_is_the_one_asked_for(retrieval_quality) -> None:
    from argparse import Namespace

    from repotune.retrieval import RetrievalConfig

    asked = {"code_only": False, "other_files": False, "embedding_model": "/models/minilm"}
    label, config = retrieval_quality.second_index(Namespace(**{**asked, "other_files": True}))
    assert label == "BM25 over other files only" and config == RetrievalConfig(current_file=False)
    assert RetrievalConfig().current_file  # the index it is compared with searches the current file too
    label, config = retrieval_quality.second_index(Namespace(**{**asked, "code_only": True}))
    assert label == "BM25 over code only" and config.kinds == ("code",) and config.current_file
    label, config = retrieval_quality.second_index(Namespace(**asked))
    assert label == "BM25 + embeddings" and config.embedding_model == "/models/minilm"
