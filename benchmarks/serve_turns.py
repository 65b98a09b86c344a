#!/usr/bin/env python3
"""Tab completions asked while a long answer is written: `repotune serve` with and without turns.

One server is the editor's: a person chats with the model (one streamed answer of ``--chat-tokens``
tokens, sampled) and meanwhile types in a file, each keystroke pause asking a tab completion (greedy,
``stop: ["\\n"]``, ``--completion-tokens`` at most), one after another until the answer ends. The two
requests never share a batch (their sampling settings differ), so without turns each completion
waits for the whole answer to end.

Two servers on the same model, started side by side and measured in alternating rounds, so that load
from other processes falls on both alike:

* ``--turn-tokens 0``: a running batch runs to its end (the behaviour before turns);
* ``--turn-tokens N`` (default 32): a running batch gives way after N tokens to requests waiting
  behind it, and its rows resume after them.

Printed: each server's completion latency (p50, p95, as the ``openai`` client sees it), the answer's
wall time and tokens per second, and an idle server's completion latency for reference; then the
ratios: completion p50 without turns over with them (the gain), and the answer's wall time with turns
over its time without turns plus the completions' time on an idle server (the cost of turns: the
prefills of rows that resume). Targets are printed as PASS/MISS, never asserted.

Usage (from the repository root)::

    .venv/bin/python benchmarks/serve_turns.py                          # the tiny model, ~1 min
    .venv/bin/python benchmarks/serve_turns.py --model smollm2-135m --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serve_latency import model_folder, model_parser, percentile, say

GAIN_TARGET = 3.0  # completion p50 at least 3x faster with turns while an answer is written
COST_TARGET = 0.15  # turns (their prefills) cost the answer at most 15 %

CHAT = "Explain how a hash map handles collisions."
FILE = "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        "
COMPLETIONS = [FILE, "def fibonacci(n):\n    ", "class Stack:\n    def __init__(self):\n        "]


def completion_s(client: Any, name: str, prompt: str, max_tokens: int) -> float:
    started = time.perf_counter()
    client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0, stop=["\n"])
    return time.perf_counter() - started


def one_round(client: Any, name: str, args: argparse.Namespace) -> tuple[list[float], float, int]:
    """The answer streamed in this thread while another asks completions until it ends: the completions'
    latencies (s), the answer's wall time (s) and its completion tokens."""
    started = time.perf_counter()
    stream = client.completions.create(
        model=name,
        prompt=CHAT,
        max_tokens=args.chat_tokens,
        temperature=0.8,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    latencies: list[float] = []
    done = threading.Event()

    def typist() -> None:
        i = 0
        while not done.is_set():  # each one asked while the answer is written, however long it waits
            latencies.append(
                completion_s(client, name, COMPLETIONS[i % len(COMPLETIONS)], args.completion_tokens)
            )
            i += 1
            time.sleep(args.pause_ms / 1000)

    thread: threading.Thread | None = None
    tokens = 0
    for chunk in stream:
        if thread is None:  # the answer is being written: start typing
            thread = threading.Thread(target=typist)
            thread.start()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    wall = time.perf_counter() - started
    done.set()
    if thread is not None:
        thread.join()
    return latencies, wall, tokens


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = model_parser(__doc__)
    p.add_argument("--chat-tokens", type=int, default=256, help="tokens of the long answer")
    p.add_argument("--completion-tokens", type=int, default=16, help="most tokens of a tab completion")
    p.add_argument("--turn-tokens", type=int, default=32, help="the second server's --turn-tokens")
    p.add_argument("--pause-ms", type=float, default=50.0, help="between one completion and the next")
    p.add_argument("--rounds", type=int, default=3, help="answers per server, alternating")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    import openai

    from repotune.serving.server import start_background

    limit = max(args.chat_tokens, args.completion_tokens)
    variants = {"no turns": 0, f"turns of {args.turn_tokens}": args.turn_tokens}
    say(f"model {folder}; answers of {args.chat_tokens} tokens, {args.rounds} rounds per server")
    results: dict[str, dict[str, list]] = {
        name: {"latencies": [], "walls": [], "tokens": []} for name in variants
    }
    idle: list[float] = []
    with (
        start_background(folder, max_tokens=limit, extra_args=["--turn-tokens", "0"]) as plain,
        start_background(
            folder, max_tokens=limit, extra_args=["--turn-tokens", str(args.turn_tokens)]
        ) as turns,
    ):
        servers = dict(zip(variants, (plain, turns), strict=True))
        clients = {
            name: openai.OpenAI(base_url=srv.openai_url, api_key="unused", max_retries=0, timeout=600)
            for name, srv in servers.items()
        }
        for name, client in clients.items():  # warm-up, unmeasured
            completion_s(client, servers[name].model_name, FILE, args.completion_tokens)
        for prompt in COMPLETIONS * 2:
            idle.append(completion_s(clients["no turns"], plain.model_name, prompt, args.completion_tokens))
        for round_ in range(args.rounds):
            for name, client in clients.items():
                latencies, wall, tokens = one_round(client, servers[name].model_name, args)
                results[name]["latencies"] += latencies
                results[name]["walls"].append(wall)
                results[name]["tokens"].append(tokens)
                say(
                    f"round {round_ + 1}, {name}: {len(latencies)} completions, "
                    f"answer {tokens} tokens in {wall:.1f} s"
                )

    rows = []
    for name, got in results.items():
        latencies = got["latencies"] or [float("nan")]
        wall = statistics.median(got["walls"])
        rows.append(
            {
                "server": name,
                "completions": len(got["latencies"]),
                "completion_p50_ms": 1000 * percentile(latencies, 50),
                "completion_p95_ms": 1000 * percentile(latencies, 95),
                "answer_s": wall,
                "answer_tokens_per_s": statistics.median(
                    t / w for t, w in zip(got["tokens"], got["walls"], strict=True)
                ),
            }
        )
    print(f"serve_turns: {args.model} ({platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"idle server, completion p50: {1000 * statistics.median(idle):.1f} ms")
    headers = list(rows[0])
    print("  ".join(f"{h:>20}" for h in headers))
    for row in rows:
        print(
            "  ".join(f"{row[h]:>20.1f}" if isinstance(row[h], float) else f"{row[h]:>20}" for h in headers)
        )
    before, after = rows
    gain = before["completion_p50_ms"] / after["completion_p50_ms"]
    slower = after["answer_s"] / before["answer_s"] - 1
    # With turns the answer shares the model with the completions asked during it (without turns they
    # ran after it): what turns themselves cost (the prefills of the rows that resume) is the answer's
    # time beyond its time without turns plus those completions' time on an idle server.
    shared = after["completions"] / args.rounds * statistics.median(idle)
    cost = after["answer_s"] / (before["answer_s"] + shared) - 1
    print(f"\ncompletion p50 during the answer, no turns / turns: {gain:.2f}x")
    print(
        f"the answer's wall time, turns vs no turns: {slower:+.1%}, of which the {shared:.1f} s the "
        f"completions take on an idle server; beyond that (the cost of turns): {cost:+.1%}"
    )
    checks = [
        (f"completions >= {GAIN_TARGET:.0f}x faster with turns", gain >= GAIN_TARGET, f"{gain:.2f}x"),
        (f"turns cost the answer at most {COST_TARGET:.0%}", cost <= COST_TARGET, f"{cost:+.1%}"),
    ]
    print("\nTargets (printed, not asserted):")
    for target, ok, value in checks:
        print(f"  {target}: {'PASS' if ok else 'MISS'} ({value})")
    if args.json:
        args.json.write_text(
            json.dumps({"model": str(folder), "rows": rows, "targets": checks}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
