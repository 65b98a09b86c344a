"""The evaluation report: Markdown for people and the KFP UI, HTML with a bar chart per metric."""

from __future__ import annotations

import html
from typing import Any

from repotune.evaluate.decide import Decision
from repotune.evaluate.metrics import Metric, format_value

MODELS = ("base", "candidate", "champion")
COLOURS = {"base": "#9aa5b1", "candidate": "#2f80ed", "champion": "#f2994a"}


def _cell(metric: Metric | None) -> str:
    if metric is None:
        return "n/a"
    if metric.ci_low is None:
        return f"{format_value(metric.value)} (n={metric.n}, too few for a CI)"
    interval = f"[{format_value(metric.ci_low)}, {format_value(metric.ci_high)}]"
    return f"{format_value(metric.value)} {interval} n={metric.n}"


def _names(scores: dict[str, dict[str, Metric]]) -> list[str]:
    names: list[str] = []
    for model in MODELS:
        for name in scores.get(model, {}):
            if name not in names:
                names.append(name)
    return names


def render_markdown(scores: dict[str, dict[str, Metric]], decision: Decision, context: dict[str, Any]) -> str:
    verdict = (
        "**The candidate wins and is promoted.**"
        if decision.promote
        else "**The candidate is not promoted.**"
    )
    present = [m for m in MODELS if m in scores]
    lines = [
        "# repotune evaluation",
        "",
        verdict + " " + decision.reasons[0],
        "",
        *[f"- {reason}" for reason in decision.reasons[1:]],
        "",
        f"Held-out data: `{context.get('data')}`; candidate `{context.get('candidate')}`; "
        f"base `{context.get('base')}`"
        + (f"; champion version {context['champion']}" if context.get("champion") else "")
        + ".",
        "",
        "| metric | better | " + " | ".join(present) + " |",
        "|---|---|" + "---|" * len(present),
    ]
    for name in _names(scores):
        some = next(scores[m][name] for m in present if name in scores[m])
        lines.append(
            f"| {name} | {'higher' if some.higher_is_better else 'lower'} | "
            + " | ".join(_cell(scores[m].get(name)) for m in present)
            + " |"
        )
    lines += [
        "",
        "Values are means over held-out examples (perplexity: token-weighted over blocks) with 95% bootstrap",
        "confidence intervals; every model answered the same samples. `forgetting_perplexity` is measured on",
        "general code outside the project (the Python standard library) to catch a model that learned the",
        "project but lost everything else.",
    ]
    return "\n".join(lines) + "\n"


def render_html(scores: dict[str, dict[str, Metric]], decision: Decision, context: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external assets) that the KFP UI can show."""
    present = [m for m in MODELS if m in scores]
    charts = []
    for name in _names(scores):
        values = {m: scores[m][name] for m in present if name in scores[m]}
        top = max((m.ci_high or m.value) for m in values.values()) or 1.0
        bars = []
        for row, (model, metric) in enumerate(values.items()):
            y = 8 + row * 26
            width = 300 * metric.value / top
            bars.append(
                f'<rect x="90" y="{y}" width="{width:.1f}" height="18" fill="{COLOURS[model]}"/>'
                f'<text x="84" y="{y + 13}" text-anchor="end" font-size="12">{model}</text>'
                f'<text x="{94 + width:.1f}" y="{y + 13}" font-size="12">'
                f"{html.escape(format_value(metric.value))}</text>"
            )
            if metric.ci_low is not None:
                x1, x2 = 90 + 300 * metric.ci_low / top, 90 + 300 * metric.ci_high / top
                bars.append(f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y + 9}" y2="{y + 9}" stroke="#222"/>')
        better = "higher is better" if next(iter(values.values())).higher_is_better else "lower is better"
        height = 16 + 26 * len(values)
        charts.append(
            f"<h3>{html.escape(name)} <small>({better})</small></h3>"
            f'<svg width="460" height="{height}" role="img">{"".join(bars)}</svg>'
        )
    verdict = "promoted" if decision.promote else "not promoted"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>repotune evaluation</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em}</style></head><body>"
        f"<h1>Candidate {verdict}</h1><ul>{reasons}</ul>"
        f"<p>Held-out data: <code>{html.escape(str(context.get('data')))}</code></p>"
        + "".join(charts)
        + "</body></html>\n"
    )
