#!/usr/bin/env python3
"""Writing the line above again: how often greedy line completion copies the line above the cursor,
and what decoding such a copy again from its least certain token (``retry_line_above``, the evaluate
stage's and ``repotune serve``'s default) makes of it.

Line samples are drawn as the evaluate stage draws them from the held-out records of a clean folder
(``--data DIR``, e.g. a demo run's ``clean/dataset``), each model answers them as the stage asks
(first non-blank line, greedy, the line repeat penalty), first without the second pass; the answers
that copy the line above are then asked again with it. Answers that do not copy are the same either
way (the second pass only looks at copies), so they are not decoded twice. Printed per model: the
copies before and after, line exact match and edit similarity both ways with their paired
difference, the time the second pass added against the first, and each copy with what replaced it.
Nothing is asserted: it measures.

Usage (from the repository root)::

    .venv/bin/python benchmarks/line_above.py --data .demo/kfp/RUN/clean/dataset \\
        --model smollm2-135m --model .demo/kfp/RUN/train/model/merged --lines 200
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

from repotune.data.transforms import code_prompt
from repotune.decoding import RETRIES, rewrites_line_above
from repotune.evaluate import ScoringConfig
from repotune.evaluate.generate import complete_lines
from repotune.evaluate.metrics import edit_similarity, exact_match
from repotune.evaluate.samples import LineSample, draw_samples
from repotune.evaluate.score import Scorer
from repotune.models import resolve_base_model
from repotune.records import read_records


def lines_parser(description: str, lines: int) -> argparse.ArgumentParser:
    """The options of a benchmark over a clean folder's held-out lines (this one's and
    ``first_lines.py``'s): ``--data``, ``--model`` (repeatable), ``--lines``, ``--context-chars``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data", type=Path, required=True, help="a clean folder whose eval.jsonl to draw from"
    )
    parser.add_argument(
        "--model", action="append", required=True, help="a model folder, or a base model's name (repeatable)"
    )
    parser.add_argument("--lines", type=int, default=lines, help=f"line completion samples (default {lines})")
    parser.add_argument(
        "--context-chars", type=int, default=1500, help="code before the cursor (default 1500)"
    )
    return parser


def held_out_lines(args: argparse.Namespace) -> tuple[ScoringConfig, list[LineSample]]:
    """The line samples the evaluate stage draws from ``args.data``, and the config they were drawn
    with; says where they came from and on what machine."""
    config = ScoringConfig(line_samples=args.lines, fim_samples=0, commit_samples=0, forgetting_files=0,
                           context_chars=args.context_chars)  # fmt: skip
    samples = draw_samples(list(read_records(args.data / "eval.jsonl")), config).lines
    print(
        f"{len(samples)} held-out lines from {args.data}, {args.context_chars} characters before the cursor"
    )
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    return config, samples


def main() -> int:
    parser = lines_parser(__doc__.split("\n\n")[0], lines=200)
    parser.add_argument(
        "--retries", type=int, default=RETRIES,
        help=f"a copy's least certain tokens to decode again from, against one (default {RETRIES})",
    )  # fmt: skip
    args = parser.parse_args()
    config, samples = held_out_lines(args)
    expected = [s.expected for s in samples]
    befores = [s.prefix for s in samples]
    for spec in args.model:
        scorer = Scorer(resolve_base_model(spec), config)
        prompts = [code_prompt(s.prefix, path=s.path, tokenizer=scorer.tokenizer) for s in samples]
        asked = {"batch_size": config.batch_size, "max_new_tokens": config.max_new_tokens,
                 "line_penalty": config.line_repeat_penalty}  # fmt: skip
        started = time.process_time()
        first = complete_lines(scorer.model, scorer.tokenizer, prompts, **asked)
        first_seconds = time.process_time() - started
        copies = [i for i, c in enumerate(first) if rewrites_line_above(c.text, befores[i])]
        passes = {}  # tries -> (answers, CPU seconds of the second pass)
        for tries in sorted({1, args.retries}):
            started = time.process_time()
            again = complete_lines(
                scorer.model, scorer.tokenizer, [prompts[i] for i in copies], **asked,
                befores=[befores[i] for i in copies], retries=tries,
            )  # fmt: skip
            second = list(first)
            for i, completion in zip(copies, again, strict=True):
                second[i] = completion
            passes[tries] = (second, time.process_time() - started)
        print(f"== {spec}")
        for tries, (second, seconds) in passes.items():
            left = sum(rewrites_line_above(c.text, befores[i]) for i, c in enumerate(second))
            replaced = sum(second[i].retried for i in copies)
            print(f"-- decoded again from up to {tries} of a copy's least certain tokens")
            print(f"copies of the line above: {len(copies)}/{len(samples)} -> {left}/{len(samples)} "
                  f"({replaced} replaced by a line decoded again)")  # fmt: skip
            for name, score in (("exact match", exact_match), ("edit similarity", edit_similarity)):
                before = [score(c.text, e) for c, e in zip(first, expected, strict=True)]
                after = [score(c.text, e) for c, e in zip(second, expected, strict=True)]
                diff = [b - a for a, b in zip(before, after, strict=True)]
                print(f"line {name}: {statistics.fmean(before):.4f} -> {statistics.fmean(after):.4f} "
                      f"(paired difference {statistics.fmean(diff):+.4f}, {sum(d > 0 for d in diff)} better, "
                      f"{sum(d < 0 for d in diff)} worse)")  # fmt: skip
            ratio = seconds / first_seconds if first_seconds else float("nan")
            print(f"CPU time: first pass {first_seconds:.1f} s, second pass on the copies {seconds:.1f} s "
                  f"(ratio {ratio:.3f})")  # fmt: skip
        for i in copies:
            print(f"  line above : {befores[i].rstrip().splitlines()[-1]!r}")
            print(f"  expected   : {expected[i]!r}")
            print(f"  first      : {first[i].text!r}")
            for tries, (second, _) in passes.items():
                kept = "" if second[i].retried else "  (kept: no better line)"
                print(f"  {f'{tries} tries':<11}: {second[i].text!r}{kept}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
