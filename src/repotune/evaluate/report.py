"""The evaluation report: the decision and its reasons first, what was trained on and scored on, the
arm table; Markdown for people and the CLI, HTML (a table and a bar chart per metric) for the KFP UI."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from repotune.decoding import line_above
from repotune.evaluate.arms import MODELS, Arm
from repotune.evaluate.decide import MARKER_METRIC, REPEAT_METRIC, Decision, fim_holder, fim_scores
from repotune.evaluate.metrics import MIN_SAMPLES_FOR_CI, Metric, format_value


class EvaluateResult(Protocol):
    """What the report reads of :class:`repotune.evaluate.stage.EvaluateResult` (the stage renders
    the report, so the report does not import the stage)."""

    decision: Decision
    models: dict[str, dict[str, Metric]]
    split: dict[str, Any] | None
    seconds: float | None


ARM_COLUMNS = (
    ("line_exact_match", "line exact match"),
    ("line_edit_similarity", "line edit similarity"),
    ("fim_exact_match", "FIM exact match"),
    ("fim_edit_similarity", "FIM edit similarity"),
    ("fim_prefix_only_edit_similarity", "FIM edit similarity, prefix alone"),
    ("perplexity", "perplexity of {code}"),
    ("line_diff_marker_share", "diff-marker share"),
)
"""The arm table's columns: completion metrics first, then the secondary perplexity and the format check."""
COLOURS = {
    "base": "#9aa5b1",
    "base_retrieval": "#5f6b7a",
    "candidate": "#2f80ed",
    "candidate_retrieval": "#1b4f9c",
    "champion": "#f2994a",
    "champion_retrieval": "#b8651b",
}
TOO_FEW = f"too few for an interval (under {MIN_SAMPLES_FOR_CI})"
OTHER_TOKENS = "other tokens, not comparable"
"""Said of a perplexity scored on other tokens than the candidate's (a champion on another tokenizer):
the same code cut into other tokens has another perplexity, which says nothing of which model is better."""
FOOTER = "Values are means over the same held-out samples"


def ordered_arms(keys: Iterable[str]) -> list[Arm]:
    """Arms in table order: base, base + retrieval, candidate, candidate + retrieval, champion."""
    arms = [Arm.from_key(key) for key in keys]
    return sorted(arms, key=lambda a: (MODELS.index(a.model), a.retrieval))


def cell(metric: Metric | None) -> str:
    """``0.274 [0.250, 0.301] n=30``, or the value, n and why there is no interval."""
    if metric is None:
        return "–"
    if metric.ci_low is None or metric.ci_high is None:
        return f"{format_value(metric.value)} n={metric.n}, {TOO_FEW}"
    interval = f"[{format_value(metric.ci_low)}, {format_value(metric.ci_high)}]"
    return f"{format_value(metric.value)} {interval} n={metric.n}"


def arm_cell(result: EvaluateResult, arm: Arm, name: str) -> str:
    """``cell`` of ``arm``'s ``name``, marked where it was scored on other tokens than the candidate's."""
    metric = result.models[arm.key].get(name)
    reference = result.models.get("candidate", {}).get(name)
    apart = (
        metric is not None
        and reference is not None
        and None not in (metric.tokens, reference.tokens)
        and metric.tokens != reference.tokens
    )
    return cell(metric) + (f" ({OTHER_TOKENS})" if apart else "")


def verdict(result: EvaluateResult) -> str:
    decision = result.decision
    if decision.promote and decision.arm is not None:
        return f"Promoted: {decision.arm.label}."
    return "Not promoted."


def headline(reason: str) -> str:
    """The decision's first reason without the lead the verdict already says (``promote ARM: ``,
    ``do not promote: ``)."""
    if reason.startswith("do not promote: "):
        return reason.removeprefix("do not promote: ")
    if reason.startswith("promote ") and ": " in reason:
        return reason.split(": ", 1)[1]
    return reason


def provenance(result: EvaluateResult, context: dict[str, Any]) -> str:
    """Which split was scored, what the model was trained on and what it was scored on."""
    split = result.split
    temporal = (split.get("mode") if split else context.get("mode")) == "temporal"
    if temporal:
        cut = (split or {}).get("cut") or {}
        where = f" at `{str(cut.get('commit', ''))[:12]}`" if cut.get("commit") else ""
        date = f" ({str(cut['date'])[:10]})" if cut.get("date") else ""
        rule = f", {split['rule']}" if split and split.get("rule") else ""
        mode = f"Temporal split{where}{date}{rule}: scored on code added after the training cut."
    else:
        why = f" ({split['reason']})" if split and split.get("reason") else ""
        mode = f"File split{why}: scored on held-out files, which training never saw."
    if not split:
        return f"{mode} The clean stage recorded no more."
    return f"{mode} Trained on {_words(split.get('trained_on'))}; scored on {_words(split.get('scored_on'))}."


def _words(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(
            f"{_words(v)} {k}" if isinstance(v, int) else f"{k} {_words(v)}" for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return ", ".join(_words(v) for v in value)
    return str(value) if value is not None else "(not recorded)"


def gaps(result: EvaluateResult) -> str | None:
    """How the chosen (or best) candidate arm fills a gap an editor asks about, as serving will; None
    when no FIM samples were scored."""
    decision = result.decision
    if decision.arm is None or decision.fim is None:
        return None
    arm = fim_holder(result.models, decision.arm)  # the arm whose scores decided, as fills_with_fim reads
    with_fim, alone = fim_scores(result.models[arm.key])
    measured = ", ".join(
        f"{format_value(m.value)} {how}"
        for m, how in ((with_fim, "with FIM prompts"), (alone, "from the prefix alone"))
        if m is not None
    )
    how = "with FIM prompts (the suffix in view)" if decision.fim else "from the code before the cursor alone"
    served = "served" if decision.promote else "it would be served"
    return (
        f"Gaps (requests with a suffix): the {arm.label} fills them best {how}, FIM edit similarity "
        f"{measured}; {served} with `--fim {'on' if decision.fim else 'off'}`."
    )


FLAG_CHECKS = (
    (MARKER_METRIC, "started like a diff line or a file header"),
    (REPEAT_METRIC, "wrote the line above the cursor again"),
)
"""The format checks whose completions the report shows, and what a flagged completion did."""
FLAGGED_SHOWN = 5
"""Completions shown per arm and check; the share in the table counts them all."""
FLAGGED_CHARS = 160


def flagged_completions(
    lines: Sequence[Any],
    per_sample: dict[str, dict[str, list[float]]],
    answers: dict[str, dict[str, list[str]]],
    limit: int = FLAGGED_SHOWN,
) -> dict[str, dict[str, Any]]:
    """The line completions each format check counted, by check and arm: ``{"count", "of", "examples"}``
    with up to ``limit`` examples of ``{"path", "line", "answer"}`` (the file's line and the arm's
    answer, special tokens kept where the arm recorded them: a ``<filename>`` header is what the check
    saw), and for a repeat the line above the cursor that it repeated (``above``). A share of 0.02
    refuses a promotion; the report shows which two lines, so a person can judge them. Arms with none
    flagged are left out."""
    flagged: dict[str, dict[str, Any]] = {}
    for metric, _ in FLAG_CHECKS:
        for arm, scores in per_sample.items():
            flags = scores.get(metric) or []
            hits = [i for i, flag in enumerate(flags) if flag]
            if not hits:
                continue
            got = answers.get(arm, {})
            said = got.get("line_raw") or got.get("line") or []
            examples = [
                {"path": lines[i].path, "line": lines[i].expected, "answer": said[i] if i < len(said) else ""}
                | ({"above": line_above(lines[i].prefix)} if metric == REPEAT_METRIC else {})
                for i in hits[:limit]
            ]
            flagged.setdefault(metric, {})[arm] = {"count": len(hits), "of": len(flags), "examples": examples}
    return flagged


def _clip(text: str) -> str:
    return text if len(text) <= FLAGGED_CHARS else text[: FLAGGED_CHARS - 3] + "..."


def _code(text: str) -> str:
    """``text`` as one Markdown code span, whatever backticks it holds (CommonMark: a longer fence, and
    a space inside where the text starts or ends with a backtick); an empty answer says so."""
    if not text:
        return "(nothing)"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def flagged_markdown(context: dict[str, Any]) -> list[str]:
    """The report's section of flagged completions (``context["flagged"]``), or no lines when none."""
    flagged = context.get("flagged") or {}
    out: list[str] = []
    for metric, did in FLAG_CHECKS:
        for arm in ordered_arms(flagged.get(metric, {})):
            entry = flagged[metric][arm.key]
            shown = len(entry["examples"])
            more = f", the first {shown}" if shown < entry["count"] else ""
            out += [
                "",
                f"{arm.label}: {entry['count']} of {entry['of']} line completions {did} (`{metric}`{more}):",
                "",
            ]
            out += [
                f"- `{e['path']}`: wrote {_code(_clip(e['answer']))} "
                f"where the file has {_code(_clip(e['line']))}"
                + (f", below {_code(_clip(e['above']))}" if "above" in e else "")
                for e in entry["examples"]
            ]
    return ["", "## Completions the format checks counted", *out] if out else []


def flagged_html(context: dict[str, Any]) -> str:
    """The same section as an HTML table per check, for the KFP UI; empty when nothing was flagged."""
    flagged = context.get("flagged") or {}
    parts = []
    for metric, did in FLAG_CHECKS:
        rows = "".join(
            f"<tr><th>{html.escape(arm.label)}<br><small>{flagged[metric][arm.key]['count']} of "
            f"{flagged[metric][arm.key]['of']}</small></th><td><code>{html.escape(e['path'])}</code></td>"
            f"<td><code>{html.escape(_clip(e['answer']))}</code></td><td><code>{html.escape(_clip(e['line']))}"
            "</code>"
            + (
                f"<br><small>below</small> <code>{html.escape(_clip(e['above']))}</code>"
                if "above" in e
                else ""
            )
            + "</td></tr>"
            for arm in ordered_arms(flagged.get(metric, {}))
            for e in flagged[metric][arm.key]["examples"]
        )
        if rows:
            parts.append(
                f"<h3>Line completions that {html.escape(did)} <small>(<code>{metric}</code>)</small></h3>"
                "<table class='flagged'><thead><tr><th>arm</th><th>file</th><th>answer</th>"
                "<th>the file's line</th></tr>"
                f"</thead><tbody>{rows}</tbody></table>"
            )
    return "<h2>Completions the format checks counted</h2>" + "".join(parts) if parts else ""


CONFIDENCE_TITLES = ("all lines", "the most confident half", "the most confident quarter")
"""Column titles of the confidence table, one per share of ``metrics.COVERAGES``."""
CONFIDENCE_NOTE = (
    "A completion's confidence is the geometric mean of the probabilities its model gave the tokens of "
    "its line, newline included. An editor that showed only completions at or above a threshold would "
    "have shown these: line exact match / edit similarity of the completions shown, then the share shown "
    "and the threshold (`repotune serve --min-confidence`). The second column says how often a right "
    "line was more confident than a wrong one (0.5: chance; 1: every right line above every wrong one)."
)
RANKED_TITLE = "right line more confident than a wrong one"


def confidence_cells(context: dict[str, Any]) -> tuple[list[str], list[tuple[Arm, list[str]]]]:
    """The confidence table's column titles and its cells by arm (``context["confidence"]``,
    ``score.confidence_summary``); no rows when no arm recorded confidences."""
    rows = []
    summary = context.get("confidence") or {}
    for arm in ordered_arms(summary):
        entry = summary[arm.key]
        ranked = entry.get("ranked_above")
        if ranked is None:  # every line wrong, or every one right
            right = entry["shown"][0]["line_exact_match"] if entry["shown"] else 0.0
            cells = ["- (no line right)" if right == 0 else "- (every line right)"]
        else:
            cells = [f"{ranked:.2f}"]
        for shown in entry["shown"]:
            cell = f"{shown['line_exact_match']:.3f} / {shown['line_edit_similarity']:.3f}"
            if shown["coverage"] < 1:
                cell += f" ({shown['shown']:.0%} shown, >= {shown['threshold']:.2f})"
            cells.append(cell)
        rows.append((arm, cells))
    titles = [RANKED_TITLE, *CONFIDENCE_TITLES[: len(rows[0][1]) - 1]] if rows else []
    return titles, rows


def confidence_table(context: dict[str, Any]) -> list[str]:
    """The confidence table as Markdown lines (benchmarks/quality.py prints it too); none when no arm
    recorded confidences."""
    titles, rows = confidence_cells(context)
    if not rows:
        return []
    return [
        "| arm | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(titles),
        *(f"| {arm.label} | " + " | ".join(cells) + " |" for arm, cells in rows),
    ]


def confidence_markdown(context: dict[str, Any]) -> list[str]:
    """The report's confidence section, or no lines when no arm recorded confidences."""
    table = confidence_table(context)
    return ["", "## Showing only confident completions", "", CONFIDENCE_NOTE, "", *table] if table else []


def confidence_html(context: dict[str, Any]) -> str:
    """The same section as an HTML table; empty when no arm recorded confidences."""
    titles, rows = confidence_cells(context)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(title)}</th>" for title in titles)
    body = "".join(
        f"<tr><th>{html.escape(arm.label)}</th>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        + "</tr>"
        for arm, cells in rows
    )
    return (
        f"<h2>Showing only confident completions</h2><p>{_inline(CONFIDENCE_NOTE)}</p>"
        f"<table><thead><tr><th>arm</th>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _columns(result: EvaluateResult, context: dict[str, Any]) -> list[tuple[str, str]]:
    code = "added code" if context.get("mode") == "temporal" else "held-out code"
    present = {name for scores in result.models.values() for name in scores}
    return [(name, title.format(code=code)) for name, title in ARM_COLUMNS if name in present]


OTHER_TITLES = {
    "commit_chrf": "commit message chrF",
    "commit_rouge_l": "commit message ROUGE-L",
    "fim_prefix_only_exact_match": "FIM exact match, prefix alone",
    "forgetting_perplexity": "perplexity of general code (forgetting)",
    "line_repeats_line_above_share": "line completions that repeat the line above",
}
"""Titles of the metrics outside the arm table; the metric's own name follows each, as logged."""


def other_title(name: str) -> str:
    """``commit message chrF (`commit_chrf`)``: a person's title and the name MLflow logs it under."""
    return f"{OTHER_TITLES[name]} (`{name}`)" if name in OTHER_TITLES else name


def candidate_line(context: dict[str, Any]) -> str | None:
    """What the candidate is: its base model and method, its steps, and the repository and commit its
    data came from (``train_summary.json``); None when the context does not say."""
    model = context.get("model") or {}
    if not model.get("base_model"):
        return None
    steps = f", {model['steps']} steps" if model.get("steps") else ""
    source = f" on `{model['source']}`" if model.get("source") else ""
    commit = f" at `{str(model['commit'])[:12]}`" if model.get("commit") else ""
    method = model.get("method") or "a fine-tune"
    return f"Candidate: {method} of `{model['base_model']}`{steps}, trained{source}{commit}."


def _other_metrics(result: EvaluateResult) -> list[str]:
    shown = {name for name, _ in ARM_COLUMNS}
    names: list[str] = []
    for arm in ordered_arms(result.models):
        for name in result.models[arm.key]:
            if name not in shown and name not in names:
                names.append(name)
    return names


def _role(arm: Arm, result: EvaluateResult) -> str:
    decision = result.decision
    if decision.arm == arm:
        return " (chosen)" if decision.promote else " (best candidate arm)"
    if decision.reference == arm:
        return " (reference)"
    return ""


def render_markdown(result: EvaluateResult, context: dict[str, Any]) -> str:
    decision = result.decision
    arms = ordered_arms(result.models)
    columns = _columns(result, context)
    lines = [
        "# repotune evaluation",
        "",
        f"**{verdict(result)}** {headline(decision.reasons[0])}",
        "",
        *[f"- {reason}" for reason in decision.reasons[1:]],
        "",
        *([line, ""] if (line := candidate_line(context)) else []),
        provenance(result, context),
        "",
        "| arm | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm in arms:
        lines.append(
            f"| {arm.label}{_role(arm, result)} | "
            + " | ".join(arm_cell(result, arm, n) for n, _ in columns)
            + " |"
        )
    others = _other_metrics(result)
    if others:
        having = [a for a in arms if any(n in result.models[a.key] for n in others)]
        lines += ["", "| metric | better | " + " | ".join(a.label for a in having) + " |",
                  "|---|---|" + "---|" * len(having)]  # fmt: skip
        for name in others:
            some = next(result.models[a.key][name] for a in having if name in result.models[a.key])
            lines.append(
                f"| {other_title(name)} | {'higher' if some.higher_is_better else 'lower'} | "
                + " | ".join(arm_cell(result, a, name) for a in having)
                + " |"
            )
    filled = gaps(result)
    lines += [*(["", filled] if filled else []), *flagged_markdown(context)]
    # After the notes on the method, where `repotune evaluate` and `run` stop printing the report.
    lines += ["", _setting_line(result, context), "", *_footer(context), *confidence_markdown(context)]
    return "\n".join(lines) + "\n"


def _setting_line(result: EvaluateResult, context: dict[str, Any]) -> str:
    retrieval = "retrieval arms not scored (no index)"
    if context.get("index"):
        tokens = context["retrieval_context_tokens"]
        retrieval = f"retrieval: index {context['index']}, up to {tokens} tokens of context"
        current = context.get("retrieval_current_file")
        if current is not None:
            retrieval += " (the file being completed searched too)" if current else " (other files only)"
        found = context.get("samples_with_context")
        if found:
            retrieval += f", found for {found['lines']} lines and {found['fims']} FIM spans"
    champion = f"; champion version {context['champion']}" if context.get("champion") else ""
    timing = f"; scored in {result.seconds:.0f} s" if result.seconds is not None else ""
    if timing and context.get("base_arms"):
        timing += f" (base arms {context['base_arms']})"
    return (
        f"Held-out data `{context.get('data')}`; candidate `{context.get('candidate')}`; base "
        f"`{context.get('base')}`{champion}; {retrieval}{timing}."
    )


def _footer(context: dict[str, Any]) -> list[str]:
    if context.get("mode") == "temporal":
        code = "the added lines' tokens, the file before them as context"
    else:
        code = "every token of the held-out code files"
    penalty = context.get("line_repeat_penalty")
    decoding = (
        f"decoded greedily with a line repeat penalty of {penalty:g}, as `repotune serve` decodes by default"
        if penalty
        else "decoded greedily"
    )
    if context.get("retry_line_above"):
        decoding += "; one that wrote the line above again, decoded again from its least certain tokens"
    return [
        f"{FOOTER} (a completion's answer is its first non-blank line, {decoding}), each with its 95%",
        "bootstrap interval and sample count n; the decision compares arms pair by pair over those samples.",
        f"Perplexity is token-weighted over {code}, for models without retrieved context.",
        "The diff-marker share counts line completions that start like a diff's header (`diff --git`, `@@`,",
        "`--- a/`, `+++ b/`), a diff's line (`+` or `-`, then code indented as the line or the line above it",
        "is; a bullet is not one) or a file header (`<filename>`, `# File:`) where the file's lines",
        "do not. `line_repeats_line_above_share` counts line completions that write the line above the",
        "cursor again (Continue's editor plugin drops those) even so. `forgetting_perplexity` is measured on",
        "general code outside the project (the Python standard library) to catch a model that learned the",
        "project but lost everything else.",
    ]


BAR_X = 150
BAR_WIDTH = 300
ROW_HEIGHT = 26
LABEL_GAP = 8


def axis_ticks(top: float) -> list[float]:
    """Round ticks from 0 to a round number at or above ``top`` (three to six of them, a step of 1, 2,
    2.5 or 5 times a power of ten): a chart's scale, so a bar's length reads as its value."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    count = max(1, math.ceil(top / step - 1e-9))
    return [round(step * i, 12) for i in range(count + 1)]


def _bars(name: str, metrics: list[tuple[Arm, Metric, str]]) -> str:
    """One metric's horizontal bars, one per arm (with its cell's text), over an axis from 0 with round
    ticks and light grid lines; each row's label sits right of its bar and whisker."""
    ticks = axis_ticks(
        max(max(m.value, m.ci_high if m.ci_high is not None else m.value) for _, m, _ in metrics)
    )
    top = ticks[-1]

    def x(value: float) -> float:
        return BAR_X + BAR_WIDTH * value / top

    rows = []
    for row, (arm, metric, text) in enumerate(metrics):
        y = 8 + row * ROW_HEIGHT
        right = x(metric.value)
        parts = [
            f'<text class="arm" x="{BAR_X - 6}" y="{y + 13}" text-anchor="end">'
            f"{html.escape(arm.label)}</text>",
            f'<rect class="value" x="{BAR_X}" y="{y}" width="{right - BAR_X:.1f}" height="18" '
            f'fill="{COLOURS.get(arm.key, "#888")}"/>',
        ]
        if metric.ci_low is not None and metric.ci_high is not None:
            x1, x2 = x(metric.ci_low), x(metric.ci_high)
            mid = y + 9
            parts.append(
                f'<line class="whisker" x1="{x1:.1f}" x2="{x2:.1f}" y1="{mid}" y2="{mid}" stroke="#222"/>'
                f'<line class="cap" x1="{x1:.1f}" x2="{x1:.1f}" y1="{mid - 5}" y2="{mid + 5}" stroke="#222"/>'
                f'<line class="cap" x1="{x2:.1f}" x2="{x2:.1f}" y1="{mid - 5}" y2="{mid + 5}" stroke="#222"/>'
            )
            right = max(right, x2)
        parts.append(
            f'<text class="label" x="{right + LABEL_GAP:.1f}" y="{y + 13}">{html.escape(text)}</text>'
        )
        rows.append(f'<g class="bar" data-arm="{arm.key}">{"".join(parts)}</g>')
    bottom = 8 + ROW_HEIGHT * len(metrics)
    axis = [f'<line x1="{BAR_X}" x2="{x(top):.1f}" y1="{bottom}" y2="{bottom}" stroke="#888"/>']
    for tick in ticks:
        at = x(tick)
        axis.append(
            f'<line class="grid" x1="{at:.1f}" x2="{at:.1f}" y1="4" y2="{bottom + 4}" stroke="#ddd"/>'
            f'<text class="tick" x="{at:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#555">'
            f"{tick:g}</text>"
        )
    height = bottom + 22
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="820" height="{height}" role="img" '
        f'aria-label="{html.escape(name)}" font-size="12" font-family="sans-serif">'
        f'<g class="axis">{"".join(axis)}</g>{"".join(rows)}</svg>'
    )


def render_html(result: EvaluateResult, context: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external assets) that the KFP UI can show."""
    decision = result.decision
    arms = ordered_arms(result.models)
    columns = _columns(result, context)
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join(
        f"<tr><th>{html.escape(arm.label + _role(arm, result))}</th>"
        + "".join(f"<td>{html.escape(arm_cell(result, arm, n))}</td>" for n, _ in columns)
        + "</tr>"
        for arm in arms
    )
    charts = []
    for name, title in [*columns, *((n, OTHER_TITLES.get(n, n)) for n in _other_metrics(result))]:
        metrics = [
            (arm, result.models[arm.key][name], arm_cell(result, arm, name))
            for arm in arms
            if name in result.models[arm.key]
        ]
        better = "higher is better" if metrics[0][1].higher_is_better else "lower is better"
        charts.append(f"<h3>{html.escape(title)} <small>({better})</small></h3>{_bars(name, metrics)}")
    reasons = "".join(f"<li>{_inline(r)}</li>" for r in decision.reasons[1:])
    model = candidate_line(context)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>repotune evaluation</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}td{font-variant-numeric:tabular-nums}"
        ".flagged code{white-space:pre-wrap}"  # a line's indentation is part of the answer
        "</style></head><body>"
        f"<h1>{html.escape(verdict(result))}</h1><p>{_inline(headline(decision.reasons[0]))}</p>"
        + (f"<ul>{reasons}</ul>" if reasons else "")
        + (f"<p>{_inline(model)}</p>" if model else "")
        + f"<p>{_inline(provenance(result, context))}</p>"
        f"<table><thead><tr><th>arm</th>{head}</tr></thead><tbody>{body}</tbody></table>"
        + (f"<p>{_inline(filled)}</p>" if (filled := gaps(result)) else "")
        + flagged_html(context)
        + f"<p><small>{_inline(_setting_line(result, context))}</small></p>"
        + "".join(charts)
        + f"<p><small>{_inline(' '.join(_footer(context)))}</small></p>"
        + confidence_html(context)
        + "</body></html>\n"
    )


_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Markdown's inline code as HTML's (`--fim off` as <code>--fim off</code>), the rest escaped."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))
