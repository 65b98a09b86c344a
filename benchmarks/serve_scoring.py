#!/usr/bin/env python3
"""Log-likelihood requests as lm-evaluation-harness sends them to `repotune serve`: echo + logprobs vs
the same prompts asked for one token without scoring.

lm-evaluation-harness's ``local-completions`` asks a text's log-likelihood with its token ids as the
prompt, ``echo``, ``logprobs: 1`` and one token to generate; with ``--batch_size N`` it sends N prompts
in one request. Its prompts are long (a task's few-shot context) and unlike one another. Each request
here is such a batch of ``--batch`` prompts of ``--tokens`` tokens each, cut one after another from
the repository's own Python source (no two requests share a prompt, so the prefix cache holds nothing
of one before it is asked), in two kinds alternated request by request:

* ``one token``: the prompts asked for one token, no log probabilities (the baseline: the server
  reads each prompt once);
* ``echo + logprobs 1``: the log-likelihood request (the server reads the prompts to score every
  token, and generate goes on from what that read where it can).

The ratio of their medians is what scoring costs beyond reading the prompts. Nothing is asserted.

Usage (from the repository root)::

    .venv/bin/python benchmarks/serve_scoring.py                         # the tiny model, seconds
    .venv/bin/python benchmarks/serve_scoring.py --model smollm2-135m --tokens 300 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from harness import repository_source
from serve_latency import model_folder, model_parser, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = model_parser(__doc__)
    p.add_argument("--tokens", type=int, default=300, help="tokens a prompt")
    p.add_argument(
        "--batch", type=int, default=8, help="prompts a request (lm-evaluation-harness's --batch_size)"
    )
    p.add_argument("--requests", type=int, default=4, help="requests of each kind")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    import httpx
    from transformers import AutoTokenizer

    from repotune.serving.server import start_background

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(repository_source(), add_special_tokens=False).input_ids
    needed = (2 * args.requests + 1) * args.batch * args.tokens
    if needed > len(ids):
        raise SystemExit(f"the source is {len(ids)} tokens, {needed} needed: ask for fewer")
    prompts = iter([ids[at : at + args.tokens] for at in range(0, needed, args.tokens)])
    kinds: dict[str, dict[str, Any]] = {"one token": {}, "echo + logprobs 1": {"echo": True, "logprobs": 1}}
    say(
        f"model {folder}; {args.requests} requests of each kind, {args.batch} prompts of {args.tokens} tokens"
    )
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    cached: dict[str, int] = dict.fromkeys(kinds, 0)
    with start_background(folder, max_batch_size=args.batch) as server:

        def ask(kind: str) -> tuple[float, int]:
            body = {"model": server.model_name, "prompt": [next(prompts) for _ in range(args.batch)],
                    "max_tokens": 1, "temperature": 0, **kinds[kind]}  # fmt: skip
            started = time.perf_counter()
            answer = httpx.post(f"{server.openai_url}/completions", json=body, timeout=600)
            answer.raise_for_status()
            return time.perf_counter() - started, answer.json()["usage"]["prompt_tokens_details"][
                "cached_tokens"
            ]

        ask("one token")  # warm-up, unmeasured
        for _ in range(args.requests):
            for kind in kinds:
                seconds, tokens = ask(kind)
                latencies[kind].append(seconds)
                cached[kind] += tokens
    base = statistics.median(latencies["one token"])
    print(f"{'kind':<20}{'p50 ms':>10}{'ratio':>8}{'cached tokens':>15}")
    for kind, values in latencies.items():
        p50 = statistics.median(values)
        print(f"{kind:<20}{1000 * p50:>10.1f}{p50 / base:>7.2f}x{cached[kind] / args.requests:>15.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
