#!/usr/bin/env python3
"""Models side by side on a clean folder's held-out lines: each model's first line, as the evaluate
stage asks it (greedy, the line repeat penalty, a copy of the line above decoded again), scored
against the file's own line, and each model against the first one named, paired.

What compares two trainings of the same data quickly (another recipe setting, another seed) without
the pipeline's other arms: no retrieval, no FIM, no perplexity. The lines are drawn as the evaluate
stage draws them (``draw_samples``), so every model answers the same prompts. Printed per model: line
edit similarity and exact match, the relative change of edit similarity against the first model with
its paired 95% bootstrap interval, the lines that start like a diff (``starts_like_training_format``)
and the CPU seconds taken. Nothing is asserted: it measures.

Usage (from the repository root)::

    .venv/bin/python benchmarks/first_lines.py --data .demo/kfp/RUN/clean/dataset \\
        --model smollm2-135m --model OUT_A --model OUT_B --lines 400 [--json answers.json]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from line_above import held_out_lines, lines_parser
from quality import relative_change
from repotune.data.transforms import code_prompt
from repotune.evaluate.generate import complete_lines, starts_like_training_format
from repotune.evaluate.metrics import edit_similarity, exact_match
from repotune.evaluate.score import Scorer
from repotune.models import resolve_base_model


def main() -> int:
    parser = lines_parser(__doc__.split("\n\n")[0], lines=400)
    parser.add_argument("--json", type=Path, help="write each model's answers here")
    args = parser.parse_args()
    config, samples = held_out_lines(args)
    expected = [s.expected for s in samples]
    scores: dict[str, list[float]] = {}
    answers: dict[str, list[str]] = {}
    for spec in args.model:
        scorer = Scorer(resolve_base_model(spec), config)
        prompts = [code_prompt(s.prefix, path=s.path, tokenizer=scorer.tokenizer) for s in samples]
        started = time.process_time()
        done = complete_lines(
            scorer.model, scorer.tokenizer, prompts, batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens, line_penalty=config.line_repeat_penalty,
            befores=[s.prefix for s in samples],
        )  # fmt: skip
        seconds = time.process_time() - started
        answers[spec] = [c.text for c in done]
        scores[spec] = [edit_similarity(c.text, e) for c, e in zip(done, expected, strict=True)]
        exact = statistics.fmean(exact_match(c.text, e) for c, e in zip(done, expected, strict=True))
        diffs = sum(
            starts_like_training_format(c.raw, s.expected, s.prefix)
            for c, s in zip(done, samples, strict=True)
        )
        first = args.model[0]
        line = f"{spec}\n  line edit similarity {statistics.fmean(scores[spec]):.4f}, exact match {exact:.4f}"
        change = relative_change(scores[spec], scores[first]) if spec != first else None
        if change is not None:
            low, high = change["ci_low"], change["ci_high"]
            line += f"; against {first}: {change['value']:+.1%} [{low:+.1%}, {high:+.1%}]"
        print(f"{line}\n  diff lines {diffs}/{len(samples)}, {seconds:.0f} CPU seconds", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"expected": expected, "answers": answers}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
