#!/usr/bin/env python3
"""Serving latency and throughput: `repotune serve` under 1 and 16 concurrent clients vs bare generate().

Two variants on the same prompts, greedy decoding and the same ``--max-tokens``:

* ``generate``: the baseline. The model loaded in this process (same dtype and device as the server
  picks) and ``model.generate`` called once per prompt, one after another: no HTTP, no queue, no batching.
  It alternates prompt by prompt with the server's 1-client run, so that load from other processes on
  the machine falls on both alike.
* ``server``: ``repotune serve`` started as a subprocess (``repotune.serving.server.start_background``),
  queried with the official ``openai`` client (``/openai/v1/completions``) from 1 and then from 16
  client threads, each sending its share of ``--requests`` prompts one after another.

Latency is per request, wall clock, as the client sees it (p50 and p95, in ms). Throughput is completion
tokens (as the server's ``usage`` counts them, or the baseline's new tokens) per second of wall time, and
requests per second. An idle server uses no CPU, so the alternating baseline and server never compete.

Ratios: server overhead at concurrency 1 is the server's p50 over the baseline's p50, minus 1 (target
under 15 %); batching gain is the server's tokens/s at 16 clients over its tokens/s at 1 client (target
at least 3x). Targets are printed as PASS/MISS, never asserted; the exit status is 0 when everything ran.

Usage (from the repository root)::

    .venv/bin/python benchmarks/serve_latency.py                         # the tiny model, a quick check
    .venv/bin/python benchmarks/serve_latency.py --model smollm2-135m --max-tokens 32 --json out.json
    .venv/bin/python benchmarks/serve_latency.py --model PATH_TO_MODEL_FOLDER --requests 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
OVERHEAD_TARGET = 0.15
BATCHING_GAIN_TARGET = 3.0

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n",
    "# Read a JSON file and return its keys\ndef read_keys(path):\n",
    "def is_prime(n: int) -> bool:\n",
    "for i in range(10):\n",
    "def merge_sort(items):\n",
    "from pathlib import Path\n\n\ndef count_lines(folder):\n",
]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, clients: int, latencies_s: list[float], tokens: int, wall_s: float) -> dict[str, Any]:
    return {
        "variant": name,
        "clients": clients,
        "requests": len(latencies_s),
        "p50_ms": 1000 * statistics.median(latencies_s),
        "p95_ms": 1000 * percentile(latencies_s, 95),
        "tokens_per_s": tokens / wall_s,
        "requests_per_s": len(latencies_s) / wall_s,
        "completion_tokens": tokens,
    }


def load_baseline(folder: Path) -> tuple[Any, str]:
    """``model.generate`` on one prompt, in this process, with the model loaded as the server loads it.

    Returns the function (prompt -> new tokens) and the device.
    """
    import torch
    from transformers import LogitsProcessorList

    from repotune.decoding import LinePenaltyProcessor, newline_tokens
    from repotune.serving.loading import load_model
    from repotune.serving.model import encode_prompt
    from repotune.serving.settings import ServeSettings

    loaded = load_model(folder)
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    newlines = newline_tokens(tokenizer)
    penalty = ServeSettings().line_repeat_penalty  # what the server decodes a request like ours with

    def generate(prompt: str, max_tokens: int) -> int:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
        processors = [LinePenaltyProcessor([penalty], [ids.shape[1]], newlines)] if penalty else []
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList(processors),
            )
        return out.shape[1] - ids.shape[1]

    return generate, str(device)


def completion(client: Any, name: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    answer = client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return time.perf_counter() - t0, answer.usage.completion_tokens


def run_interleaved(generate: Any, client: Any, name: str, prompts: list[str], max_tokens: int) -> list[dict]:
    """Baseline and server at 1 client, alternating prompt by prompt, so that load from elsewhere on
    the machine falls on both alike. The idle side (the server between requests) uses no CPU."""
    base_lat, base_tokens, server_lat, server_tokens = [], 0, [], 0
    for prompt in prompts:
        t0 = time.perf_counter()
        base_tokens += generate(prompt, max_tokens)
        base_lat.append(time.perf_counter() - t0)
        latency, tokens = completion(client, name, prompt, max_tokens)
        server_lat.append(latency)
        server_tokens += tokens
    return [
        summary("generate", 1, base_lat, base_tokens, sum(base_lat)),
        summary("server", 1, server_lat, server_tokens, sum(server_lat)),
    ]


def run_server_level(
    client: Any, name: str, prompts: list[str], max_tokens: int, clients: int
) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda prompt: completion(client, name, prompt, max_tokens), prompts))
    wall = time.perf_counter() - started
    return summary("server", clients, [r[0] for r in results], sum(r[1] for r in results), wall)


def model_parser(doc: str) -> argparse.ArgumentParser:
    """A serving benchmark's command line: its docstring's first paragraph, and ``--model``."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model", default="tiny", help="tiny, smollm2-135m, a model folder, or any base model spec"
    )
    return p


def model_folder(spec: str) -> Path:
    """The model ``--model`` names, as a folder (``repotune.models.resolve_base_model``)."""
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from repotune.models import resolve_base_model

    return resolve_base_model(spec)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = model_parser(__doc__)
    p.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request")
    p.add_argument("--requests", type=int, default=32, help="requests per variant and concurrency level")
    p.add_argument("--concurrency", default="1,16", help="client counts to measure, comma-separated")
    p.add_argument("--max-batch-size", type=int, default=16, help="the server's --max-batch-size")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests before each variant")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    import openai

    from repotune.serving.server import start_background

    levels = sorted({1, *(int(c) for c in args.concurrency.split(","))})
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    say(f"model {folder}; {args.requests} requests of {args.max_tokens} tokens per level")

    generate, device = load_baseline(folder)
    with start_background(
        folder, max_batch_size=args.max_batch_size, max_tokens=max(args.max_tokens, 16)
    ) as srv:
        client = openai.OpenAI(base_url=srv.openai_url, api_key="unused", max_retries=0, timeout=600)
        for prompt in prompts[: args.warmup]:
            generate(prompt, args.max_tokens)
            completion(client, srv.model_name, prompt, args.max_tokens)
        rows = run_interleaved(generate, client, srv.model_name, prompts, args.max_tokens)
        say("baseline and server at 1 client done")
        for clients in [c for c in levels if c > 1]:
            rows.append(run_server_level(client, srv.model_name, prompts, args.max_tokens, clients))
            say(f"server at {clients} clients done")

    headers = ["variant", "clients", "requests", "p50_ms", "p95_ms", "tokens_per_s", "requests_per_s"]
    print(f"serve_latency: {args.model} on {device} ({platform.machine()}, {os.cpu_count()} CPUs)")
    print("  ".join(f"{h:>14}" for h in headers))
    for row in rows:
        print(
            "  ".join(f"{row[h]:>14.1f}" if isinstance(row[h], float) else f"{row[h]:>14}" for h in headers)
        )

    baseline = rows[0]
    by_clients = {row["clients"]: row for row in rows[1:]}
    checks = []
    if 1 in by_clients:
        overhead = by_clients[1]["p50_ms"] / baseline["p50_ms"] - 1
        print(f"\nserver overhead at 1 client (p50 vs generate): {overhead:+.1%}")
        checks.append(("server overhead at 1 client < 15%", overhead < OVERHEAD_TARGET, f"{overhead:+.1%}"))
    if 1 in by_clients and max(by_clients) > 1:
        top = max(by_clients)
        gain = by_clients[top]["tokens_per_s"] / by_clients[1]["tokens_per_s"]
        print(f"throughput at {top} clients vs 1 client: {gain:.2f}x")
        checks.append(
            (f"throughput at {top} clients >= 3x 1 client", gain >= BATCHING_GAIN_TARGET, f"{gain:.2f}x")
        )
    print("\nTargets (printed, not asserted):")
    for target, ok, value in checks:
        print(f"  {target}: {'PASS' if ok else 'MISS'} ({value})")
    if args.json:
        result = {"model": str(folder), "device": device, "max_tokens": args.max_tokens, "rows": rows}
        args.json.write_text(json.dumps({**result, "targets": checks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
