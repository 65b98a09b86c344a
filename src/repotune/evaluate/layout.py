"""The files of an evaluation folder, named once: what the evaluate stage writes and runs and the UI read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvaluateLayout:
    """An evaluation's folder."""

    folder: Path

    @property
    def metrics(self) -> Path:
        """Every metric of every model with its sample count and interval, and the decision."""
        return self.folder / "metrics.json"

    @property
    def completions(self) -> Path:
        """Each line and FIM sample with the expected text and every arm's answer, one JSON object a line."""
        return self.folder / "completions.jsonl"

    @property
    def base_scores(self) -> Path:
        """The base model's arms as scored (or reused) here, under their key: another evaluation given
        this folder as ``base_scores`` takes them instead of scoring the base model again."""
        return self.folder / "base_scores.json"

    @property
    def report_md(self) -> Path:
        """The verdict and its reasons first, then the metric table, in Markdown."""
        return self.folder / "report.md"

    @property
    def report_html(self) -> Path:
        """The same with the arm table and a bar chart per metric, for the KFP UI."""
        return self.folder / "report.html"
