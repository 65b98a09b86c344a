#!/usr/bin/env python3
"""The server's prefix cache: editors' completions as their users type, with and without it.

An editor asks for a completion each time its user pauses: the prompt is the file before the cursor,
so each prompt is the one before with a few more characters typed at its end. This replays that on
real files of this repository: from the start of ``--start-line`` the cursor moves ``--step-chars``
characters a request, ``--requests`` times; each prompt is the file before it, from the line that
keeps the longest prompt within ``--context-chars`` characters, answered to the end of the line
(``stop: ["\\n"]``, ``--max-tokens``). ``--editors N`` editors type at once, each in its own file of
``--files`` (one by default): their requests of a step are sent together, and share batches. Where a
file is longer than an editor's window, the window's start moves as the cursor does, each prompt starts
differently, and the cache has nothing to reuse: this measures the case it serves, a file that fits.

Two servers run the same model (``repotune serve``): ``--prefix-cache-tokens 0`` (every prompt read
whole) and the default (the keys and values of the closest of the last sequences served reused up to
the tokens they share). They answer the same prompts in turn, step by step, so load from elsewhere on
the machine falls on both alike (an idle server uses no CPU). Printed: latency p50 and p95 per
variant, the ratio of p50s, how many answers differ (greedy decoding: a prompt read in two pieces
gives the same logits up to rounding), and the prompt tokens the server reports reused.

Usage (from the repository root)::

    .venv/bin/python benchmarks/serve_prefix_cache.py                       # the tiny model: a quick check
    .venv/bin/python benchmarks/serve_prefix_cache.py --model smollm2-135m  # the demo's base model
    .venv/bin/python benchmarks/serve_prefix_cache.py --model smollm2-135m --editors 4
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from serve_latency import REPO_ROOT, model_folder, model_parser, percentile, say

SPEEDUP_TARGET = 2.0
FILES = ("batching.py", "model.py", "server.py", "protocol.py")


def prompts(file: Path, start_line: int, count: int, context_chars: int, step_chars: int) -> list[str]:
    """The file before the cursor as someone types on from the start of line ``start_line``: the cursor
    moves ``step_chars`` characters a request, ``count`` times. The prompts start at one line, chosen
    so that the longest is at most ``context_chars`` characters (a window that slides as the cursor
    moves would change every prompt's start, and then nothing is shared)."""
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if start_line >= len(lines):
        raise SystemExit(f"{file} has {len(lines)} lines: --start-line {start_line} is past its end")
    first = sum(map(len, lines[:start_line]))
    cursors = [min(len(text), first + step * step_chars) for step in range(1, count + 1)]
    begin = 0
    while cursors[-1] - begin > context_chars:
        begin = text.index("\n", begin) + 1
    return [text[begin:cursor] for cursor in cursors]


def reused_tokens(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("repotune_prefix_cache_tokens_total"):
            return float(line.split()[-1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = model_parser(__doc__)
    p.add_argument(
        "--files",
        type=Path,
        nargs="+",
        default=[REPO_ROOT / "src/repotune/serving" / name for name in FILES],
        help="the files typed in, one an editor",
    )
    p.add_argument("--editors", type=int, default=1, help="editors typing at once, each in its own file")
    p.add_argument("--start-line", type=int, default=120, help="the first cursor line (0-based)")
    p.add_argument("--requests", type=int, default=24, help="completions per variant")
    p.add_argument("--step-chars", type=int, default=8, help="characters typed between two requests")
    p.add_argument("--context-chars", type=int, default=3500, help="most characters of the file before it")
    p.add_argument(
        "--retrieval", choices=("on", "off", "auto"), default="auto", help="both servers' --retrieval"
    )
    p.add_argument("--max-tokens", type=int, default=24, help="completion tokens at most (ends at a newline)")
    args = p.parse_args(argv)
    folder = model_folder(args.model)
    import openai

    from repotune.serving.server import start_background

    if not 1 <= args.editors <= len(args.files):
        raise SystemExit(f"--editors must be from 1 to the {len(args.files)} --files")
    files = args.files[: args.editors]
    # one round a cursor step: each editor's prompt of that step, asked at once
    typed = [prompts(f, args.start_line, args.requests, args.context_chars, args.step_chars) for f in files]
    rounds = list(zip(*typed, strict=True))
    names = ", ".join(f.name for f in files)
    say(f"model {folder}; {args.requests} completions on each of {names}, up to {args.context_chars} chars")
    both = ["--retrieval", args.retrieval]
    variants = {"read whole": [*both, "--prefix-cache-tokens", "0"], "prefix cache": both}
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    answers: dict[str, list[str]] = {name: [] for name in variants}
    prompt_tokens: list[int] = []
    with (
        start_background(folder, max_tokens=args.max_tokens, extra_args=variants["read whole"]) as whole,
        start_background(folder, max_tokens=args.max_tokens, extra_args=variants["prefix cache"]) as cached,
    ):
        servers = {"read whole": whole, "prefix cache": cached}
        clients = {
            name: openai.OpenAI(base_url=srv.openai_url, api_key="unused", max_retries=0, timeout=600)
            for name, srv in servers.items()
        }
        for asked in rounds:
            for name, srv in servers.items():

                def ask(prompt: str, name: str = name, srv: Any = srv) -> tuple[float, Any]:
                    t0 = time.perf_counter()
                    done = clients[name].completions.create(
                        model=srv.model_name,
                        prompt=prompt,
                        max_tokens=args.max_tokens,
                        temperature=0,
                        stop=["\n"],
                    )
                    return time.perf_counter() - t0, done

                with ThreadPoolExecutor(len(asked)) as pool:
                    for seconds, done in pool.map(ask, asked):
                        latencies[name].append(seconds)
                        answers[name].append(done.choices[0].text)
                        if name == "prefix cache":
                            prompt_tokens.append(done.usage.prompt_tokens)
        reused = reused_tokens(cached.url)

    print(f"serve_prefix_cache: {args.model} ({platform.machine()}, {os.cpu_count()} CPUs)")
    count = len(latencies["read whole"])
    print(
        f"{count} completions from {args.editors} editor(s) at once, prompts of "
        f"{statistics.median(prompt_tokens):.0f} tokens (median)"
    )
    print(f"{'variant':>14}  {'p50_ms':>8}  {'p95_ms':>8}")
    for name, values in latencies.items():
        print(f"{name:>14}  {1000 * statistics.median(values):>8.1f}  {1000 * percentile(values, 95):>8.1f}")
    speedup = statistics.median(latencies["read whole"]) / statistics.median(latencies["prefix cache"])
    differ = sum(a != b for a, b in zip(answers["read whole"], answers["prefix cache"], strict=True))
    print(f"\np50 read whole / p50 with the prefix cache: {speedup:.2f}x")
    print(f"prompt tokens reused: {reused:.0f} of {sum(prompt_tokens)} ({reused / sum(prompt_tokens):.0%})")
    print(f"answers that differ: {differ} of {count}")
    print("\nTargets (printed, not asserted):")
    fast = "PASS" if speedup >= SPEEDUP_TARGET else "MISS"
    print(f"  p50 at least {SPEEDUP_TARGET:g}x faster: {fast} ({speedup:.2f}x)")
    print(f"  the same answers: {'PASS' if differ == 0 else 'MISS'} ({differ} differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
