#!/usr/bin/env python3
"""What returning log probabilities costs `repotune serve`: completions with `logprobs` vs without.

One server, the same prompts and greedy decoding, three kinds of request alternated prompt by prompt
(so that load from elsewhere on the machine falls on all alike), one client at a time and then
``--clients`` at once:

* ``plain``: a completion of ``--max-tokens`` tokens, no log probabilities (the baseline);
* ``logprobs 5``: the same with ``logprobs: 5`` (each token's log probability and the five likeliest of
  its step);
* ``plain, streamed`` and ``logprobs 5, streamed``: the first two with ``stream: true`` (each chunk
  carries the tokens its text completes), timed to the last chunk;
* ``echo + logprobs 1``: lm-evaluation-harness's log-likelihood request (the prompt as token ids,
  ``echo``, ``logprobs: 1``, one token to generate; a longer prompt, every prompt then one, about 100
  tokens): the prompt is scored in a forward pass of its own, kept for generate where it is scored
  alone. Its baseline is the same prompt asked for one token without log probabilities.

Each request sets ``frequency_penalty: 0``, so that all three decode alike. Latency is per request as
the client sees it (p50, ms); the ratio is each kind's p50 over its baseline's. Nothing is asserted.

Usage (from the repository root)::

    .venv/bin/python benchmarks/serve_logprobs.py                      # the tiny model, a quick check
    .venv/bin/python benchmarks/serve_logprobs.py --model smollm2-135m --requests 24
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serve_latency import PROMPTS, model_folder, model_parser, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = model_parser(__doc__)
    p.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request")
    p.add_argument("--requests", type=int, default=16, help="requests of each kind and concurrency level")
    p.add_argument("--clients", type=int, default=8, help="clients at once in the second round")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    import openai
    from transformers import AutoTokenizer

    from repotune.serving.server import start_background

    tokenizer = AutoTokenizer.from_pretrained(folder)
    # A log-likelihood request's context is longer than an editor's few lines: all the prompts, then one.
    ids = [tokenizer("".join(PROMPTS) + p, add_special_tokens=False).input_ids for p in PROMPTS]
    kinds: dict[str, Any] = {
        "plain": lambda i: {"prompt": PROMPTS[i], "max_tokens": args.max_tokens},
        "logprobs 5": lambda i: {"prompt": PROMPTS[i], "max_tokens": args.max_tokens, "logprobs": 5},
        "plain, streamed": lambda i: {"prompt": PROMPTS[i], "max_tokens": args.max_tokens, "stream": True},
        "logprobs 5, streamed": lambda i: {
            "prompt": PROMPTS[i],
            "max_tokens": args.max_tokens,
            "logprobs": 5,
            "stream": True,
        },
        "plain, 1 token": lambda i: {"prompt": ids[i], "max_tokens": 1},
        "echo + logprobs 1": lambda i: {"prompt": ids[i], "max_tokens": 1, "logprobs": 1, "echo": True},
    }
    baseline = {
        "logprobs 5": "plain",
        "logprobs 5, streamed": "plain, streamed",
        "echo + logprobs 1": "plain, 1 token",
    }
    say(f"model {folder}; {args.requests} requests of each kind, 1 client then {args.clients}")
    results: dict[str, dict[str, float]] = {}
    with start_background(folder, max_tokens=args.max_tokens, max_batch_size=args.clients) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0, timeout=600)

        def ask(kind: str, i: int) -> float:
            started = time.perf_counter()
            body = kinds[kind](i % len(PROMPTS))
            answer = client.completions.create(
                model=server.model_name, temperature=0, frequency_penalty=0, **body
            )
            if body.get("stream"):
                for _ in answer:  # to the last chunk
                    pass
            return time.perf_counter() - started

        for kind in kinds:  # warm-up, unmeasured
            ask(kind, 0)
        for clients in (1, args.clients):
            latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
            with ThreadPoolExecutor(clients) as pool:
                for start in range(0, args.requests, clients):
                    for kind in kinds:  # a round of each kind in turn
                        batch = range(start, min(start + clients, args.requests))
                        latencies[kind] += pool.map(lambda i, k=kind: ask(k, i), batch)
            for kind, values in latencies.items():
                results[f"{kind} @{clients}"] = {"p50_ms": 1000 * statistics.median(values)}
    print(f"{'kind':<28}{'p50 ms':>10}{'ratio':>10}")
    for name, row in results.items():
        kind, clients = name.rsplit(" @", 1)
        base = results.get(f"{baseline.get(kind, kind)} @{clients}")
        row["ratio"] = row["p50_ms"] / base["p50_ms"] if base else 1.0
        print(f"{name:<28}{row['p50_ms']:>10.1f}{row['ratio']:>9.2f}x")
    if args.json:
        machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
