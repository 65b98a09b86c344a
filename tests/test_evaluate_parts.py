"""The parts of evaluation that need no trained model: answers, samples, progress, the report."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from repotune.errors import RepotuneError
from repotune.evaluate import ScoringConfig
from repotune.evaluate.arms import Arm
from repotune.evaluate.decide import Decision
from repotune.evaluate.generate import Progress, answer_line, line_done, starts_like_training_format
from repotune.evaluate.layout import EvaluateLayout
from repotune.evaluate.metrics import Metric
from repotune.evaluate.samples import ScoredText, draw_samples, line_spans
from repotune.records import Kind, Record

NO_FORGETTING = ScoringConfig(forgetting_files=0)


@pytest.mark.parametrize(
    ("generated", "after_newline", "answer"),
    [
        ("\n    return a + b\n", True, "    return a + b"),
        ("\n\n\n    return a + b", True, "    return a + b"),  # blank lines are not an answer
        ("  # tail of the line above\n    return x\n", True, "    return x"),
        ("    return x", True, ""),  # never left the line above the cursor
        ("\n   \n", True, ""),
        ("a + b)\nnext line", False, "a + b)"),
        ("\n\nfoo()\n", False, "foo()"),  # a leading newline is not an answer (CrossCodeEval)
        ("", False, ""),
    ],
)
def test_the_answer_is_the_first_non_blank_line(generated: str, after_newline: bool, answer: str) -> None:
    assert answer_line(generated, after_newline=after_newline) == answer


def test_a_row_is_done_once_its_first_non_blank_line_has_ended() -> None:
    assert not line_done("\n", after_newline=True)
    assert not line_done("\n    return", after_newline=True)
    assert not line_done("\n\n   \n", after_newline=True)
    assert line_done("\n    return x\n", after_newline=True)
    assert not line_done("tail of the line above\n", after_newline=True)
    assert line_done("a + b)\n", after_newline=False)
    assert not line_done("\n\n", after_newline=False)


def test_diff_lines_and_file_headers_are_training_format_artefacts() -> None:
    assert starts_like_training_format("-    @click.option('--xml')", "    @click.option('--xml')")
    assert starts_like_training_format("+x = 1", "x = 1")
    assert starts_like_training_format("@@ -1,3 +1,4 @@", "import os")
    assert starts_like_training_format("diff --git a/x b/x", "import os")
    assert starts_like_training_format("<filename>src/app.py", "import os")
    assert starts_like_training_format("# File: src/app.py", "import os")
    assert not starts_like_training_format("    return x", "    return y")
    # A YAML list item answered with a list item is code, not an artefact; so is one where the file
    # before the cursor has such items, whatever its own line is.
    assert not starts_like_training_format("- name: web", "- name: api")
    cases = "- case: one\n  main: |\n    x = 1\n- case: two\n  main: |\n"
    assert not starts_like_training_format("- case: three", "    reveal_type(x)", cases)
    assert starts_like_training_format("+    reveal_type(x)", "    reveal_type(x)", cases)
    # A dash at the start of a line in a Python file whose lines never start with one, then the line
    # indented as the file's line is, is a diff line: as the line above is, too.
    docstring = 'def f(a):\n    """Do it.\n\n    :param a: the thing\n'
    assert starts_like_training_format("-    :param b: the other", "    :param b: the other", docstring)
    assert starts_like_training_format("+    def encode_prompt(model):", "        return x", docstring)
    assert starts_like_training_format("--- a/src/app.py", "import os")
    assert starts_like_training_format("+++ b/src/app.py", "import os")
    # A bullet, a dash alone or a doubled mark is a wrong line, not a diff line: the answers a plain
    # "starts with a dash" rule counted on the quality benchmark and in the demo.
    assert not starts_like_training_format("- :param b: the other", "    :param b: the other", docstring)
    assert not starts_like_training_format(
        "- :param bool auto_exc: If the class subclasses", "       .. seealso::", docstring + "\n        x\n"
    )
    module_doc = '"""Serve it.\n\nThree kinds of request:\n\n'
    bullet = "- one server, the same prompts"
    assert not starts_like_training_format(bullet, "* ``plain``: no logprobs", module_doc)
    assert not starts_like_training_format("-", "    py3{12,11,10}", "[tox]\nenv_list =\n")
    assert not starts_like_training_format("---", "name: web", "")
    assert not starts_like_training_format("-- the users table", "CREATE TABLE users (", "")


def test_a_completion_that_writes_the_line_above_again_is_told_apart() -> None:
    from repotune.evaluate import rewrites_line_above

    before = '    _one_line_error(repotune("submit", "--set", "max_stepz=3"), "max_stepz")\n\n    '
    assert rewrites_line_above(
        '_one_line_error(repotune("submit", "--set", "max_stepz=3"), "max_stepz")', before
    )
    # one character in ten may differ, as in Continue's rule; a new argument is a new line
    assert rewrites_line_above(
        '_one_line_error(repotune("submit", "--set", "max_stepz=4"), "max_stepz")', before
    )
    assert not rewrites_line_above(
        '_one_line_error(repotune("deploy", "--namespace", "Team"), "namespace")', before
    )
    assert rewrites_line_above("const x = 6;", "const x = 5;\n")  # Continue's own test cases
    assert not rewrites_line_above("let y = 10;", "const x = 5;\n")
    assert not rewrites_line_above("x=6", "x=5\n")  # four characters or fewer are not judged
    assert not rewrites_line_above(")", "    )\n    ")  # the completion is what follows the cursor
    assert not rewrites_line_above("", before) and not rewrites_line_above("anything", "")


def test_progress_reports_counts_and_time_left_every_few_seconds() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = Progress(lines.append, "candidate: line completion", 40, every=5.0, clock=lambda: now[0])
    progress.advance(8)  # at 0 s: too soon for a line
    now[0] = 6.0
    progress.advance(8)  # 16 done in 6 s: 24 left at that pace take 9 s
    now[0] = 7.0
    progress.advance(8)  # 1 s after the last line: quiet
    now[0] = 20.0
    progress.advance(16)
    assert lines == [
        "  candidate: line completion: 16/40, about 9 s left",
        "  candidate: line completion: 40/40 in 20 s",
    ]


def code(path: str, content: str, **meta: object) -> Record:
    return Record(content=content, kind=Kind.CODE, source="t", id=path, file_path=path, meta=dict(meta))


FUTURE = "".join(f"def old_{i}(x):\n    return x + {i}\n" for i in range(20)) + "".join(
    f"def new_{i}(values):\n    return sorted(values)[{i}]\n" for i in range(10)
)
ADDED = [[41, 60]]  # the ten new functions, lines 41 to 60


def test_a_temporal_record_gives_samples_from_its_added_lines_only() -> None:
    records = [code("src/future.py", FUTURE, added_lines=ADDED, cut="abc")]
    samples = draw_samples(records, ScoringConfig(line_samples=10, fim_samples=5, forgetting_files=0))
    assert samples.mode == "temporal"
    spans = line_spans(FUTURE)
    added = {FUTURE[start:end] for start, end in spans[40:60]}
    assert len(samples.lines) == 10
    for sample in samples.lines:
        assert sample.expected in added
        # The context is the file's own text right before the line.
        offset = FUTURE.index(sample.prefix + sample.expected)
        assert FUTURE[offset + len(sample.prefix) :].startswith(sample.expected + "\n")
    assert len(samples.fims) == 5
    for sample in samples.fims:
        # Every line below an added line was added too: the text after it is its newline alone.
        assert sample.suffix == "\n"
        assert sample.prefix + sample.middle + "\n" in FUTURE
        assert any(line.endswith(sample.middle) for line in added)
    # Perplexity counts the added lines' characters only: from line 41 to the end of the file.
    (scored,) = samples.perplexity
    assert scored.spans == ((spans[40][0], len(FUTURE)),)


def test_the_text_after_a_fim_sample_holds_the_lines_that_were_there_not_those_added_with_it() -> None:
    """A writer going down the file has the old code below the new line, not the new lines below it."""
    from repotune.evaluate.samples import existing_after

    lines = [f"line_{n} = compute({n})" for n in range(1, 13)]
    text = "\n".join(lines) + "\n"
    record = code("src/mixed.py", text, added_lines=[[3, 4], [7, 8], [12, 12]], cut="abc")
    samples = draw_samples([record], ScoringConfig(line_samples=0, fim_samples=5, forgetting_files=0))
    assert len(samples.fims) == 5
    for sample in samples.fims:
        # The middle is at least half its line: one added line ends with it.
        (line,) = [n for n in (3, 4, 7, 8, 12) if lines[n - 1].endswith(sample.middle)]
        below = [f"line_{n} = compute({n})\n" for n in range(line + 1, 13) if n not in (3, 4, 7, 8, 12)]
        assert sample.suffix == "\n" + "".join(below)
        assert "line_12" not in sample.suffix and "line_8 =" not in sample.suffix
    # After line 8: lines 9 to 11, not line 12; cut to the characters asked for; all of it in a file split.
    end = text.index("line_8 = compute(8)") + len("line_8 = compute(8)")
    assert existing_after(record, end, 1500) == "\n" + "".join(
        f"line_{n} = compute({n})\n" for n in (9, 10, 11)
    )
    assert existing_after(record, end, 10) == ("\n" + "line_9 = compute(9)\n")[:10]
    assert existing_after(code("src/mixed.py", text), end, 1500) == text[end:]
    # A last line without a newline: nothing follows it.
    assert existing_after(code("a.py", "x = 1\ny = 2", added_lines=[[2, 2]], cut="abc"), 11, 100) == ""


def test_base_and_candidate_score_perplexity_on_the_same_tokens_and_windows() -> None:
    """A candidate's tokenizer is its base's plus the FIM tokens training added. A file that writes a
    sentinel out as text (a FIM tool's own code does) is still read by both as the same tokens, so the
    perplexity windows, and the code each scores, are the same for both models."""
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.data.transforms import FIM_TOKENS, ensure_fim_tokens
    from repotune.evaluate.generate import tokenized, windows

    base = make_tiny_tokenizer()
    base.add_special_tokens({"extra_special_tokens": ["<filename>"]})
    candidate = make_tiny_tokenizer()
    candidate.add_special_tokens({"extra_special_tokens": ["<filename>"]})
    ensure_fim_tokens(candidate)
    sentinels = "".join(f'    return "{token}"\n' for token in FIM_TOKENS) * 8
    text = FUTURE[:200] + sentinels + FUTURE[200:]
    record = code("src/fim.py", text, added_lines=[[3, 40]], cut="abc")
    texts = [*draw_samples([record], NO_FORGETTING).perplexity, ScoredText("whole.py", text, None)]
    # Encoded as prompts are, the candidate reads each sentinel as one token: the tokenizers differ.
    assert len(candidate.encode(text)) < len(base.encode(text))

    read = tokenized(texts, candidate)
    assert read == tokenized(texts, base)
    assert windows(read, 16, 1000, 0) == windows(tokenized(texts, base), 16, 1000, 0)
    # The header is still markup, one token, and scored only where the whole text is.
    header = candidate.convert_tokens_to_ids("<filename>")
    for (ids, scored), item in zip(read, texts, strict=True):
        assert ids[0] == header and ids.count(header) == 1
        assert scored[0] is (item.spans is None)
    assert candidate.convert_tokens_to_ids(FIM_TOKENS[0]) not in read[0][0]


def test_a_held_out_file_gives_samples_from_any_line() -> None:
    samples = draw_samples([code("src/held.py", FUTURE)], ScoringConfig(line_samples=60, forgetting_files=0))
    assert samples.mode == "file"
    assert any(s.expected.startswith("def old_") for s in samples.lines)
    assert samples.perplexity[0].spans is None
    # Only non-trivial lines: every `def` and `return` line but the first (nothing before it).
    assert len(samples.lines) == 59


def test_lines_that_training_holds_are_never_scored() -> None:
    # The leak audit lists the lines it found in training as seen_lines (and, in a temporal split,
    # takes them out of added_lines too; a record made by hand may not, so both are checked).
    spans = line_spans(FUTURE)
    seen = {FUTURE[start:end] for start, end in spans[40:50]}
    config = ScoringConfig(line_samples=60, fim_samples=0, forgetting_files=0)
    temporal = draw_samples([code("src/f.py", FUTURE, added_lines=ADDED, seen_lines=[[41, 50]])], config)
    held = draw_samples([code("src/h.py", FUTURE, seen_lines=[[1, 20], [41, 50]])], config)
    assert len(temporal.lines) == 10 and not seen & {s.expected for s in temporal.lines}
    assert temporal.perplexity[0].spans == ((spans[50][0], len(FUTURE)),)
    assert len(held.lines) == 30 and not seen & {s.expected for s in held.lines}
    assert held.perplexity[0].spans == ((spans[20][0], spans[40][0]), (spans[50][0], len(FUTURE)))
    with pytest.raises(RepotuneError, match=r"src/h.py.*seen_lines"):
        draw_samples([code("src/h.py", FUTURE, seen_lines=[[0, 1]])], config)


def test_held_out_text_is_what_no_training_example_holds() -> None:
    """The train stage's held-out loss is taken on these: a temporal file's added lines, less those the
    leak audit found in training, each run its own piece; a held-out file less its seen lines; a later
    commit whole."""
    from repotune.heldout import held_out_records

    spans = line_spans(FUTURE)
    temporal = code("src/f.py", FUTURE, added_lines=[[3, 4], [41, 60]], seen_lines=[[41, 50]], cut="abc")
    held = code("src/h.py", FUTURE, seen_lines=[[1, 20]])
    whole = code("src/w.py", FUTURE)
    commit = Record(content="Fix\n\ndiff --git a/x b/x\n", kind=Kind.COMMIT, source="s", id="c1")
    pieces = held_out_records([temporal, held, whole, commit])
    assert [p.content for p in pieces] == [
        FUTURE[spans[2][0] : spans[3][1] + 1],
        FUTURE[spans[50][0] :],
        FUTURE[spans[20][0] :],
        FUTURE,
        commit.content,
    ]
    assert [p.file_path for p in pieces] == ["src/f.py", "src/f.py", "src/h.py", "src/w.py", None]
    assert len({p.id for p in pieces}) == 5
    assert not any("added_lines" in p.meta or "seen_lines" in p.meta for p in pieces[:3])
    assert held_out_records([code("src/f.py", FUTURE, added_lines=[], cut="abc")]) == []


def test_added_lines_that_do_not_fit_the_file_are_named() -> None:
    for bad in ([[0, 3]], [[5, 2]], [[59, 61]], "41-60", [[1.0, 2]]):
        with pytest.raises(RepotuneError, match=r"src/future.py.*added_lines"):
            draw_samples([code("src/future.py", FUTURE, added_lines=bad)], NO_FORGETTING)


def test_a_temporal_record_with_nothing_added_is_not_scored() -> None:
    samples = draw_samples([code("src/future.py", FUTURE, added_lines=[])], NO_FORGETTING)
    assert samples.mode == "temporal" and not samples.lines and not samples.perplexity


def test_lines_are_numbered_as_git_numbers_them() -> None:
    text = "a\fb\nc\r\nd"  # a form feed inside a line, a CRLF line, no final newline
    assert [text[s:e] for s, e in line_spans(text)] == ["a\fb", "c\r", "d"]
    assert line_spans("x\n") == [(0, 1)]


def metric(
    name: str, value: float, n: int = 30, ci: tuple[float, float] | None = None, higher: bool = True
) -> Metric:
    low, high = ci if ci is not None else (None, None)
    return Metric(name, value, n, low, high, higher_is_better=higher)


def a_result(tmp_path: Path):
    from repotune.evaluate.stage import EvaluateResult

    def arm_scores(es: float, em: float, marker: float) -> dict[str, Metric]:
        return {
            "line_exact_match": metric("line_exact_match", em, ci=(max(0.0, em - 0.03), em + 0.04)),
            "line_edit_similarity": metric("line_edit_similarity", es, ci=(es - 0.05, es + 0.05)),
            "line_diff_marker_share": metric(
                "line_diff_marker_share", marker, ci=(0.0, marker + 0.05), higher=False
            ),
        }

    models = {
        "base": {
            **arm_scores(0.206, 0.0, 0.0),
            "perplexity": metric("perplexity", 11.06, 24, (10.1, 12.0), False),
        },
        "base_retrieval": arm_scores(0.222, 0.0, 0.0),
        "candidate": {
            **arm_scores(0.257, 0.033, 0.1),
            "perplexity": metric("perplexity", 9.41, 24, (8.7, 10.2), False),
            "fim_edit_similarity": metric("fim_edit_similarity", 0.09, 12),
            "commit_rouge_l": metric("commit_rouge_l", 0.2, 8),
        },
        "candidate_retrieval": arm_scores(0.248, 0.0, 0.066),
    }
    decision = Decision(
        False,
        ("do not promote: candidate: line_diff_marker_share 0.100 vs base 0.00 (from 0): worse", "more"),
        Arm("candidate"),
        Arm("base", True),
    )
    split = {"mode": "temporal", "cut": {"commit": "0123456789abcdef", "date": "2025-08-01T10:00:00+00:00"},
             "trained_on": "the repository at 0123456789ab",
             "scored_on": "100 lines added by 42 later commits",
             "reason": None, "rule": "the newest 10% of commits (the default)"}  # fmt: skip
    result = EvaluateResult(EvaluateLayout(tmp_path), decision, models, tmp_path, None, split, 12.0)
    model = {"base_model": "smollm2-135m", "method": "lora", "steps": 40, "commit": "fedcba9876543210",
             "source": "https://git.example.com/team/shop.git"}  # fmt: skip
    context = {"data": str(tmp_path), "candidate": "m", "base": "b", "mode": "temporal",
               "index": "built from train.jsonl", "retrieval_context_tokens": 96, "model": model}  # fmt: skip
    return result, context


def test_the_report_says_how_gaps_are_filled_from_the_arm_whose_scores_decided(tmp_path: Path) -> None:
    from dataclasses import replace

    from repotune.evaluate.report import gaps

    result, _ = a_result(tmp_path)
    assert gaps(result) is None  # the decision recorded no way (no FIM samples)
    candidate = result.models["candidate"]
    candidate["fim_prefix_only_edit_similarity"] = metric("fim_prefix_only_edit_similarity", 0.26, 12)
    result.models["candidate_retrieval"]["fim_prefix_only_edit_similarity"] = metric(
        "fim_prefix_only_edit_similarity", 0.31, 12
    )
    # candidate + retrieval chosen: its model's way was measured on the candidate arm, which filled both
    chosen = replace(result, decision=replace(result.decision, arm=Arm("candidate", True), fim=False))
    assert gaps(chosen) == (
        "Gaps (requests with a suffix): the candidate fills them best from the code before the cursor "
        "alone, FIM edit similarity 0.0900 with FIM prompts, 0.260 from the prefix alone; it would be "
        "served with `--fim off`."
    )
    promoted = replace(chosen, decision=replace(chosen.decision, promote=True))
    assert gaps(promoted).endswith("; served with `--fim off`.")


def test_the_markdown_report_leads_with_the_decision_and_has_the_arm_table(tmp_path: Path) -> None:
    from repotune.evaluate.report import render_markdown

    result, context = a_result(tmp_path)
    lines = render_markdown(result, context).splitlines()
    assert lines[2].startswith("**Not promoted.** candidate: line_diff_marker_share 0.100 vs base 0.00")
    text = "\n".join(lines)
    assert (
        "Temporal split at `0123456789ab` (2025-08-01), the newest 10% of commits (the default): scored"
        " on code added after the training cut. Trained on the repository at 0123456789ab; scored on 100"
        " lines added by 42 later commits." in text
    )
    header = next(line for line in lines if line.startswith("| arm |"))
    assert header == (
        "| arm | line exact match | line edit similarity | FIM edit similarity | perplexity of added code "
        "| diff-marker share |"
    )
    table = lines[lines.index(header) + 2 : lines.index(header) + 6]
    rows = {line.split(" | ")[0]: line for line in table}
    assert set(rows) == {"| base", "| base + retrieval (reference)", "| candidate (best candidate arm)",
                         "| candidate + retrieval"}  # fmt: skip
    assert "| 0.257 [0.207, 0.307] n=30 |" in rows["| candidate (best candidate arm)"]
    assert "0.0900 n=12, too few for an interval (under 20)" in rows["| candidate (best candidate arm)"]
    assert "| commit message ROUGE-L (`commit_rouge_l`) | higher |" in text


def test_the_report_shows_what_showing_only_confident_completions_would_show(tmp_path: Path) -> None:
    from repotune.evaluate.report import render_html, render_markdown
    from repotune.evaluate.score import CONFIDENCE, confidence_summary

    result, context = a_result(tmp_path)
    assert "confident" not in render_markdown(result, context)  # no confidences recorded: no section
    right = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    per_sample = {
        "candidate": {CONFIDENCE: [0.9, 0.2, 0.8, 0.1, 0.6, 0.3, 0.4, 0.5], "line_exact_match": right,
                      "line_edit_similarity": [1.0, 0.2, 1.0, 0.4, 0.5, 0.1, 0.3, 0.6]},
        "base": {CONFIDENCE: [0.5] * 8, "line_exact_match": [0.0] * 8, "line_edit_similarity": [0.25] * 8},
    }  # fmt: skip
    context["confidence"] = confidence_summary(per_sample)
    text = render_markdown(result, context)
    # After the notes on the method (where the command line stops printing the report).
    assert text.index("Values are means") < text.index("## Showing only confident completions")
    assert "| base | - (no line right) | 0.000 / 0.250 | 0.000 / 0.250 (100% shown, >= 0.50) |" in text
    # Both right lines are the two most confident: the top half and quarter hold every one of them.
    assert (
        "| candidate | 1.00 | 0.250 / 0.512 | 0.500 / 0.775 (50% shown, >= 0.50) | "
        "1.000 / 1.000 (25% shown, >= 0.80) |" in text
    )
    page = render_html(result, context)
    assert "<h2>Showing only confident completions</h2>" in page
    assert "<td>1.000 / 1.000 (25% shown, &gt;= 0.80)</td>" in page
    assert "<code>repotune serve --min-confidence</code>" in page


def test_the_report_shows_the_line_completions_that_a_format_check_counted(tmp_path: Path) -> None:
    """A share of 0.02 refuses a promotion; the report names the two lines, as the arm wrote them."""
    from repotune.evaluate.report import flagged_completions, render_html, render_markdown
    from repotune.evaluate.samples import LineSample

    lines = [
        LineSample("src/attr/_make.py", "    ...\n", "    :param callable | None field_transformer:"),
        LineSample("tests/test_x.py", "x = 1\n", "y = 2"),
        LineSample("src/attr/_make.py", "    ...\n", "       .. seealso::"),
        LineSample("tests/test_x.py", "    x = 1\n\n", "z = `tick` | 3"),
    ]
    per_sample = {
        "base": {"line_diff_marker_share": [0.0] * 4, "line_repeats_line_above_share": [0.0] * 4},
        "candidate": {
            "line_diff_marker_share": [1.0, 0.0, 1.0, 0.0],
            "line_repeats_line_above_share": [0.0, 0.0, 0.0, 1.0],
        },
        "candidate_retrieval": {"line_diff_marker_share": [0.0, 0.0, 0.0, 1.0]},
    }
    said = ["- :param bool | None getstate_setstate:", "y = 2", "- :attr.s:", "x = 1"]
    answers = {
        "base": {"line": ["a", "b", "c", "d"]},
        "candidate": {"line": said, "line_raw": said},
        # the text has special tokens removed; the raw answer is what the check read
        "candidate_retrieval": {"line": ["a", "b", "c", "src/x.py"],
                                "line_raw": ["a", "b", "c", "<filename>src/x.py"]},
    }  # fmt: skip
    flagged = flagged_completions(lines, per_sample, answers, limit=1)
    assert set(flagged) == {"line_diff_marker_share", "line_repeats_line_above_share"}
    markers = flagged["line_diff_marker_share"]
    assert set(markers) == {"candidate", "candidate_retrieval"}  # base flagged none: left out
    assert markers["candidate"] == {
        "count": 2,
        "of": 4,
        "examples": [
            {
                "path": "src/attr/_make.py",
                "line": "    :param callable | None field_transformer:",
                "answer": "- :param bool | None getstate_setstate:",
            }
        ],
    }
    assert markers["candidate_retrieval"]["examples"][0]["answer"] == "<filename>src/x.py"
    del answers["candidate_retrieval"]["line_raw"]  # base scores cached before the raw answers were kept
    assert (
        flagged_completions(lines, per_sample, answers)["line_diff_marker_share"]["candidate_retrieval"][
            "examples"
        ][0]["answer"]
        == "src/x.py"
    )

    result, context = a_result(tmp_path)
    assert "format checks" not in render_markdown(result, context)  # nothing flagged, no section
    context["flagged"] = flagged_completions(lines, per_sample, answers)
    text = render_markdown(result, context)
    section = text.split("## Completions the format checks counted\n", 1)[1]
    assert (
        "candidate: 2 of 4 line completions started like a diff line or a file header "
        "(`line_diff_marker_share`):\n\n"
        "- `src/attr/_make.py`: wrote `- :param bool | None getstate_setstate:` where the file has "
        "`    :param callable | None field_transformer:`\n"
        "- `src/attr/_make.py`: wrote `- :attr.s:` where the file has `       .. seealso::`\n"
    ) in section
    # a line with backticks is one code span all the same
    assert "wrote `x = 1` where the file has ``z = `tick` | 3``, below `    x = 1`\n" in section
    # the repeated line above is said for a repeat only
    assert section.count(", below ") == 1
    assert section.index("line_diff_marker_share") < section.index("line_repeats_line_above_share")
    page = render_html(result, context)
    assert "<h2>Completions the format checks counted</h2>" in page
    assert "<td><code>- :param bool | None getstate_setstate:</code></td>" in page
    # the indentation shows: the answer has none where the file's line has four spaces
    assert "<td><code>    :param callable | None field_transformer:</code></td>" in page
    assert "<table class='flagged'>" in page and ".flagged code{white-space:pre-wrap}" in page
    assert "<code>z = `tick` | 3</code><br><small>below</small> <code>    x = 1</code>" in page


def test_a_perplexity_read_as_other_tokens_is_marked_not_comparable(tmp_path: Path) -> None:
    from dataclasses import replace

    from repotune.evaluate.report import OTHER_TOKENS, render_html, render_markdown

    result, context = a_result(tmp_path)
    models = result.models
    for key in ("base", "candidate"):
        models[key]["perplexity"] = replace(models[key]["perplexity"], tokens="aaaa")
    # a champion tuned from another base model: its tokenizer cuts the added code into other tokens
    models["champion"] = {"perplexity": metric("perplexity", 3.2, 24, (3.0, 3.4), False)}
    models["champion"]["perplexity"] = replace(models["champion"]["perplexity"], tokens="bbbb")
    text = render_markdown(result, context)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert f"3.20 [3.00, 3.40] n=24 ({OTHER_TOKENS})" in rows["| champion"]
    assert OTHER_TOKENS not in rows["| base"] + rows["| candidate (best candidate arm)"]
    page = render_html(result, context)
    assert page.count(OTHER_TOKENS) == 2  # its table cell and its bar's label
    models["champion"]["perplexity"] = replace(models["champion"]["perplexity"], tokens="aaaa")
    assert OTHER_TOKENS not in render_markdown(result, context)


def test_the_report_says_when_it_fell_back_to_the_file_split(tmp_path: Path) -> None:
    from dataclasses import replace

    from repotune.evaluate.report import provenance

    result, context = a_result(tmp_path)
    split = {"mode": "files", "cut": None, "trained_on": "40 files at 0123456",
             "scored_on": "12 held-out files", "reason": "the source has no commit history"}  # fmt: skip
    assert provenance(replace(result, split=split), context | {"mode": "file"}) == (
        "File split (the source has no commit history): scored on held-out files, which training never saw. "
        "Trained on 40 files at 0123456; scored on 12 held-out files."
    )
    assert provenance(replace(result, split=None), context | {"mode": "file"}).startswith("File split: ")


def test_the_html_report_labels_each_bar_outside_its_whisker_with_n_and_interval(tmp_path: Path) -> None:
    from repotune.evaluate.report import render_html

    result, context = a_result(tmp_path)
    page = render_html(result, context)
    assert "<table>" in page and "perplexity of added code" in page
    assert "Trained on the repository at 0123456789ab" in page
    # the verdict and its first reason as the Markdown has them, code as code, and which model this is
    assert "<h1>Not promoted.</h1><p>candidate: line_diff_marker_share 0.100 vs base 0.00" in page
    assert "<code>https://git.example.com/team/shop.git</code> at <code>fedcba987654</code>" in page
    assert "Candidate: lora of <code>smollm2-135m</code>, 40 steps" in page and "`" not in page
    charts = re.findall(r"<svg .*?</svg>", page, re.DOTALL)
    assert len(charts) == 6  # five arm-table columns, and the commit metric
    labels = 0
    svg = "{http://www.w3.org/2000/svg}"
    for chart in charts:
        tree = ET.fromstring(chart)
        # the scale: ticks from 0 along the bars' axis, the last at or past every bar and whisker
        ticks = [
            (float(t.text), float(t.get("x"))) for t in tree.iter(f"{svg}text") if t.get("class") == "tick"
        ]
        assert ticks[0] == (0.0, 150.0) and 3 <= len(ticks) <= 7, ticks
        per_unit = (ticks[-1][1] - ticks[0][1]) / ticks[-1][0]
        for bar in (g for g in tree.iter(f"{svg}g") if g.get("class") == "bar"):
            rect = bar.find(f"{svg}rect")
            value = float(
                next(t for t in bar.iter(f"{svg}text") if t.get("class") == "label").text.split()[0]
            )
            assert float(rect.get("width")) == pytest.approx(value * per_unit, abs=0.1)
            label = next(t for t in bar.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "label")
            right = float(rect.get("x")) + float(rect.get("width"))
            whisker = next(
                (w for w in bar.iter("{http://www.w3.org/2000/svg}line") if w.get("class") == "whisker"), None
            )
            if whisker is not None:
                right = max(right, float(whisker.get("x2")))
                low, high = re.search(r"\[(.+), (.+)\]", label.text).groups()
                assert float(low) <= float(high)
            else:
                assert "too few for an interval" in label.text
            assert float(label.get("x")) > right
            assert re.search(r"n=\d+", label.text)
            labels += 1
    assert labels == 3 * 4 + 2 + 1 + 1  # four arms in three charts, two in perplexity, one each FIM/commit


def test_chart_axes_run_from_zero_to_a_round_number_past_the_largest_value() -> None:
    from repotune.evaluate.report import axis_ticks

    assert axis_ticks(0.448) == [0.0, 0.2, 0.4, 0.6]
    assert axis_ticks(33.78) == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert axis_ticks(1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert axis_ticks(0.1) == [0.0, 0.025, 0.05, 0.075, 0.1]
    assert axis_ticks(0.0) == [0.0, 1.0]  # every bar at zero: a scale all the same
    for top in (0.0031, 0.07, 0.9999, 4.2, 11.06, 812.0):
        ticks = axis_ticks(top)
        assert ticks[0] == 0 and ticks[-1] >= top and 3 <= len(ticks) <= 6, (top, ticks)


def test_the_demo_asks_for_an_added_line_as_an_editor_asks(tmp_path: Path) -> None:
    from repotune.pipelines.local import demo_query
    from repotune.records import write_records

    notes = code("docs/notes.md", "# Notes\n" * 12, added_lines=[[2, 12]], cut="abc")
    with open(tmp_path / "eval.jsonl", "w") as handle:
        # Of the new functions, only their (indented) return lines count as added.
        returns = [[n, n] for n in range(42, 61, 2)]
        write_records(handle, [notes, code("src/future.py", FUTURE, added_lines=returns, cut="abc")])
    query = demo_query(tmp_path)
    # A Python line the repository added after the cut (the Markdown file comes second); the cursor
    # after the line's indentation, where an editor puts it (the server holds the whitespace back and
    # has the model write it); the file after the line as the suffix, less the other added (return)
    # lines, which whoever wrote this one had not written yet; the path for the file header.
    assert query.path == "src/future.py"
    assert query.expected in FUTURE.splitlines()[40:60] and query.expected.startswith("    return sorted")
    assert query.prompt.endswith("\n    ") and query.suffix.startswith("\n")
    before, after = FUTURE.split(query.prompt + query.expected.lstrip())  # all of it: under 1,500 a side
    assert before == "" and query.suffix == "\n" + "".join(
        line + "\n" for line in after.splitlines()[1:] if not line.startswith("    return")
    )
    assert "def new_" in query.suffix and "return" not in query.suffix
    near = demo_query(tmp_path, context_chars=100)
    assert len(near.prompt) == 100 + len("    ") and 0 < len(near.suffix) <= 100
    assert near.prompt + near.expected.lstrip() in FUTURE and near.suffix in query.suffix
    # Without held-out records there is still a question.
    fallback = demo_query(tmp_path / "missing")
    assert fallback.prompt == "def fibonacci(n):\n    " and fallback.suffix is None and fallback.path is None


@pytest.mark.parametrize(
    "newline,feed", [("\n", ""), ("\r\n", ""), ("\n", "\x0c")], ids=["lf", "crlf", "form-feed"]
)
def test_the_demo_asks_for_a_line_of_code_not_the_middle_of_a_docstring(
    tmp_path: Path, newline: str, feed: str
) -> None:
    from repotune.pipelines.local import demo_query
    from repotune.records import write_records

    head = "".join(f"def old_{i}(x):{newline}    return x + {i}{newline}" for i in range(6))
    prose = [f"    the {word}{feed} of the values, sorted and cut" for word in ("first", "second", "third")]
    docstring = f'    """The head.{newline}{newline}' + newline.join(prose) + f'{newline}    """{newline}'
    text = head + f"def new(values):{newline}" + docstring + f"    return values[0]{newline}"
    lines = text.split("\n")  # as git numbers lines: a form feed or a carriage return ends none
    added = [[n, n] for n, line in enumerate(lines, 1) if line.rstrip("\r") in prose or "values[0]" in line]
    with open(tmp_path / "eval.jsonl", "w") as handle:
        write_records(handle, [code("src/new.py", text, added_lines=added, cut="abc")])
    # The docstring's lines do not start with a quote or '#'; only the code line is asked, whatever
    # ends the file's lines.
    assert demo_query(tmp_path).expected.rstrip("\r") == "    return values[0]"
    # Also when the question carries less context than a docstring line's distance from the top.
    assert demo_query(tmp_path, context_chars=170).expected.rstrip("\r") == "    return values[0]"


def test_the_demo_serves_the_arm_evaluation_chose() -> None:
    from repotune.pipelines.local import served_arm

    chosen = {"promote": True, "reasons": ["promote ..."], "arm": "candidate_retrieval", "retrieval": True}
    assert served_arm(chosen) == (["--retrieval", "on"], "candidate + retrieval, the arm evaluation chose")
    refused = {"promote": False, "reasons": ["do not promote ..."], "arm": "candidate", "retrieval": False}
    assert served_arm(refused) == (["--retrieval", "off"], "candidate, the best candidate arm")
    # and a suffix answered as the arm filled gaps best (decision.fim), as the deploy step serves it
    worse_with_fim = {**refused, "fim": False}
    assert served_arm(worse_with_fim) == (
        ["--retrieval", "off", "--fim", "off"],
        "candidate, the best candidate arm, gaps from the prefix alone",
    )
    assert served_arm({**chosen, "fim": True})[0] == ["--retrieval", "on", "--fim", "on"]
    # A status written before the arm was recorded, or none: the server decides as the model was trained.
    assert served_arm({"promote": False, "reasons": []}) == ([], "retrieval as the model was trained")
    assert served_arm(None) == ([], "retrieval as the model was trained")


@pytest.mark.integration
def test_the_demo_query_reaches_a_real_server_as_an_editor_sends_it(tmp_path: Path) -> None:
    """The closing query goes through ``repotune serve`` with the suffix and the file's path, served as
    the decision says (here: gaps answered from the prefix alone, to the end of the line)."""
    import json

    from tests.serving_helpers import make_serving_model

    from repotune.evaluate import rewrites_line_above
    from repotune.pipelines.local import demo_query, query_served_model
    from repotune.pipelines.status import RunLayout
    from repotune.records import write_records

    data = tmp_path / "clean"
    data.mkdir()
    with open(data / "eval.jsonl", "w") as handle:
        write_records(handle, [code("src/future.py", FUTURE, added_lines=ADDED, cut="abc")])
    model = make_serving_model(tmp_path / "model")  # with FIM tokens: "--fim off" is the decision's
    run = tmp_path / "run"
    run.mkdir()
    decision = {"promote": False, "reasons": [], "arm": "candidate", "retrieval": False, "fim": False}
    printed: list[str] = []
    text = query_served_model(model, run, data, decision=decision, log=printed.append)

    asked = demo_query(data)
    query = json.loads(RunLayout(run).status.read_text())["query"]
    assert query["prompt"] == asked.prompt and query["suffix"] == asked.suffix and asked.suffix
    assert query["file_path"] == "src/future.py" and query["expected"] == asked.expected
    assert query["completion"] == text and "\n" not in text  # one line: the server's line stop
    assert "a suffix is answered from the code before the cursor" in RunLayout(run).serve_log.read_text()
    assert any(f"suffix: {len(asked.suffix)} characters of the file after the line" in p for p in printed)
    assert printed[0].endswith("as candidate, the best candidate arm, gaps from the prefix alone")
    # a completion that writes the line above again is said to be one, and only such a one
    repeated = any("the line above written again" in p for p in printed)
    assert repeated == rewrites_line_above(text, asked.prompt)


def test_the_retrieval_budget_is_the_trained_one_else_the_one_serving_uses() -> None:
    from repotune.evaluate.stage import context_budget
    from repotune.retrieval import RetrievalConfig, RetrievalIndex

    index = RetrievalIndex.build([code("src/future.py", FUTURE)], RetrievalConfig(max_context_tokens=200))
    trained = {"recipe": {"data": {"retrieval_rate": 0.5, "retrieval_context_tokens": 96}}}
    untrained = {"recipe": {"data": {"retrieval_rate": 0.0, "retrieval_context_tokens": 96}}}
    assert context_budget(trained, index) == 96  # what the model learned to read
    assert context_budget(untrained, index) == 200  # what serving takes from the shipped index
    assert context_budget(untrained) == RetrievalConfig().max_context_tokens


def test_generation_batches_group_prompts_of_like_length() -> None:
    from repotune.evaluate.generate import length_batches

    lengths = [100, 20, 95, 90, 300, 80, 99, 21]
    batches = length_batches(lengths, 32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each prompt once
    for batch in batches:
        width = max(lengths[i] for i in batch)
        padding = sum(width - lengths[i] for i in batch)
        assert padding <= 0.25 * width * len(batch)
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert batches == [[4], [0, 6, 2, 3, 5, 7], [1]]  # 300 alone; 20 would make padding over a quarter
    assert all(len(b) <= 2 for b in length_batches(lengths, 2))
    assert length_batches([], 8) == []
    # Prompts read alone (a CPU) pay for padding only in decoding: a number of tokens bounds it.
    assert length_batches(lengths, 32, max_padding=10_000) == [[4, 0, 6, 2, 3, 5, 7, 1]]
    capped = length_batches(lengths, 32, max_padding=500)  # 300 with 100 and 99 pads 401; 95 would add 205
    assert capped == [[4, 0, 6], [2, 3, 5, 7, 1]]
    for batch in capped:
        assert sum(lengths[batch[0]] - lengths[i] for i in batch) <= 500


def test_the_padding_budget_is_what_the_weights_weigh_in_cache_tokens(tmp_path: Path) -> None:
    import torch
    from tests.serving_helpers import make_serving_model
    from transformers import AutoModelForCausalLM

    from repotune.evaluate.generate import padding_budget

    model = AutoModelForCausalLM.from_pretrained(make_serving_model(tmp_path / "tiny"))
    config = model.config
    with torch.no_grad():  # what one token of cache takes, read off a real cache
        cache = model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
    per_token = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) // 3
    weights = sum(p.nbytes for p in model.parameters())
    assert padding_budget(model) == weights // per_token
    assert config.num_hidden_layers >= 2  # several layers are counted, not one
    # A config that does not give the cache's size (another architecture's names): the share rules.
    other = SimpleNamespace(config=SimpleNamespace(n_layer=2, n_head=4), parameters=model.parameters)
    assert padding_budget(other) is None


def test_progress_seconds_must_be_a_number_of_at_least_zero() -> None:
    assert ScoringConfig(progress_seconds=0).progress_seconds == 0
    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(RepotuneError, match="progress_seconds must be a number of at least 0"):
            ScoringConfig(progress_seconds=bad)


def test_an_evaluation_that_could_never_promote_is_refused_before_it_runs(tmp_path: Path) -> None:
    from repotune.errors import RepotuneError
    from repotune.evaluate import EvaluateConfig
    from repotune.evaluate.decide import Policy
    from repotune.evaluate.settings import ScoringConfig

    folders = {"model": tmp_path / "m", "data": tmp_path / "d", "output": tmp_path / "o"}
    with pytest.raises(RepotuneError, match="line_samples is 0, but the promotion policy decides on "):
        EvaluateConfig(**folders, scoring=ScoringConfig(line_samples=0))
    # deciding on FIM spans, lines need not be scored
    EvaluateConfig(
        **folders, scoring=ScoringConfig(line_samples=0), policy=Policy(primary="fim_edit_similarity")
    )


def test_the_headline_leaves_out_what_the_verdict_says() -> None:
    from repotune.evaluate.report import headline

    assert headline(
        "promote candidate + retrieval: line_edit_similarity 0.343 vs base + retrieval 0.296"
    ) == ("line_edit_similarity 0.343 vs base + retrieval 0.296")
    assert (
        headline("do not promote: candidate: forgetting_perplexity +10%")
        == "candidate: forgetting_perplexity +10%"
    )
    assert headline("no candidate arm has the primary metric") == "no candidate arm has the primary metric"


def test_asking_for_more_lines_does_not_change_the_commits_and_general_files_scored() -> None:
    from repotune.evaluate.samples import draw_samples
    from repotune.evaluate.settings import ScoringConfig

    files = [
        Record(content="".join(f"value_{n}_{i} = compute({i}, {n})\n" for i in range(30)), kind=Kind.CODE,
               source="t", id=f"f{n}", file_path=f"pkg/m{n}.py")
        for n in range(3)
    ]  # fmt: skip
    commits = [
        Record(
            content=f"Change {n}\n\ndiff --git a/x b/x\n+x = {n}\n", kind=Kind.COMMIT, source="t", id=f"c{n}"
        )
        for n in range(12)
    ]
    drawn = [
        draw_samples(files + commits, ScoringConfig(line_samples=lines, fim_samples=5, commit_samples=4,
                                                    forgetting_files=3))
        for lines in (5, 85)  # 87 lines to draw from: 5 FIM spans, then 2
    ]  # fmt: skip
    assert [len(s.fims) for s in drawn] == [5, 2] and drawn[0].eligible_lines == 87
    assert drawn[0].commits == drawn[1].commits and len(drawn[0].commits) == 4
    assert [t.path for t in drawn[0].general] == [t.path for t in drawn[1].general] and len(
        drawn[0].general
    ) == 3


def test_a_champion_of_another_project_is_neither_compared_with_nor_replaced() -> None:
    from repotune.evaluate.registry import ROOT_COMMIT_TAG, SOURCE_TAG, ChampionInfo, check_same_project

    def champion(source: str) -> ChampionInfo:
        return ChampionInfo("repotune", "3", "models:/m-1", "s3://b/m", None, {SOURCE_TAG: source}, {})

    check_same_project(champion("/home/ci/checkouts/shop"), "/srv/build/shop", "repotune")  # same repository
    check_same_project(
        champion("https://git.example.com/team/shop.git + jira:SHOP"), "github:team/shop", "repotune"
    )
    check_same_project(None, "/srv/build/shop", "repotune")
    with pytest.raises(
        RepotuneError, match=r"champion of repotune \(version 3\) was trained on /home/a/billing"
    ):
        check_same_project(champion("/home/a/billing"), "/srv/build/shop", "repotune")

    def rooted(source: str, root: str) -> ChampionInfo:
        return ChampionInfo(
            "repotune", "3", "models:/m-1", "s3://b/m", None, {SOURCE_TAG: source, ROOT_COMMIT_TAG: root}, {}
        )

    # one repository: a checkout in any folder, a clone from its URL (the cluster's source)
    check_same_project(rooted("/home/ada/work", "a1" * 20), "https://git.example.com/team/shop.git",
                       "repotune", "a1" * 20)  # fmt: skip
    with pytest.raises(RepotuneError, match="give this project its own --model-name"):
        check_same_project(rooted("/home/a/shop", "b2" * 20), "/srv/build/shop", "repotune", "a1" * 20)
    # a champion (or a source) without a root commit: told apart by name
    check_same_project(champion("/home/ci/checkouts/shop"), "/srv/build/shop", "repotune", "a1" * 20)
    with pytest.raises(RepotuneError, match="give this project its own --model-name"):
        check_same_project(rooted("/home/a/billing", "b2" * 20), "/srv/build/shop", "repotune", None)
