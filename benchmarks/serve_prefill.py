#!/usr/bin/env python3
"""A batch's prompts on a CPU: read together, left-padded, against read as the server chooses; and
decoded in transformers' own cache layers against in place.

On a CPU a forward pass is bound by arithmetic once it reads more than a few tokens, so the left
padding of a batch costs as much as text: sixteen prompts of 100 to 800 tokens read together compute
sixteen times 800. The server (``repotune.serving.batching``) reads them one by one instead where that
costs less than the passes it adds (``PASS_TOKENS``), and decodes them together. Decoding, a
transformers cache layer copies all it holds (every row's prompt) on each token; the server's layers
(``repotune.roomy_cache``) are made with room for the tokens to come and write each in place. This
measures three ways on the same batches, in this process, with the server's ``Batcher`` (no HTTP),
the prefix cache off so that nothing is reused:

* ``together``: the prompts read together, left-padded, whatever the cost (decoded in place);
* ``copying``: as the server chooses to read them, decoded in transformers' layers
  (``Batcher.decode_room`` off: the server before it decoded in place);
* ``server``: as the server runs.

on two batches:

* ``short``: sixteen short code openings (``serve_latency.py``'s), a few tokens each: read together,
  as the server chooses for them;
* ``long``: sixteen prompts of 400 to 3,100 characters of a real file: read alone.

Each batch is run ``--rounds`` times per variant, the variants alternating. Printed: wall time per
batch (median), the ratios to the server's, the way the server chose, and whether the answers
(greedy, ``--max-tokens``) are the same.

Usage (from the repository root)::

    .venv/bin/python benchmarks/serve_prefill.py                       # the tiny model: a quick check
    .venv/bin/python benchmarks/serve_prefill.py --model smollm2-135m  # the demo's base model
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import time

from serve_latency import PROMPTS, REPO_ROOT, model_folder, model_parser, say


def batches(rows: int) -> dict[str, list[str]]:
    text = (REPO_ROOT / "src/repotune/serving/batching.py").read_text(encoding="utf-8")
    return {
        "short": [PROMPTS[i % len(PROMPTS)] for i in range(rows)],
        "long": [text[: 400 + 180 * i] for i in range(rows)],
    }


def main(argv: list[str] | None = None) -> int:
    p = model_parser(__doc__)
    p.add_argument("--rows", type=int, default=16, help="prompts a batch")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens each row writes")
    p.add_argument("--rounds", type=int, default=2, help="runs of each batch per variant")
    args = p.parse_args(argv)
    folder = model_folder(args.model)

    from repotune.serving.batching import Batcher, GenerationRequest, SamplingParams
    from repotune.serving.loading import load_model
    from repotune.serving.model import encode_prompt

    loaded = load_model(folder, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    say(f"model {folder}; batches of {args.rows} rows, {args.max_tokens} tokens each, {args.rounds} rounds")

    # variant: (prompts read as the server chooses, decoded in place)
    variants = {"together": (False, True), "copying": (True, False), "server": (True, True)}

    def run(prompts: list[list[int]], server_way: bool, in_place: bool) -> tuple[float, list[str]]:
        batcher = Batcher(model, tokenizer, max_batch_size=args.rows, batch_wait_ms=0, prefix_cache_tokens=0)
        batcher.prefill_alone = server_way  # False: read together, left-padded, whatever the cost
        batcher.decode_room = in_place  # False: transformers' layers, copied whole on each token
        requests = [GenerationRequest(ids, args.max_tokens, SamplingParams(0.0), stop=()) for ids in prompts]

        async def answered() -> list[str]:
            return [(await handle.result()).text for handle in batcher.submit_all(requests)]

        try:
            started = time.perf_counter()
            texts = asyncio.run(answered())
            return time.perf_counter() - started, texts
        finally:
            batcher.stop()

    print(f"serve_prefill: {args.model} on cpu ({platform.machine()}, {os.cpu_count()} CPUs)")
    print(
        f"{'batch':>6}  {'tokens':>13}  {'together_s':>10}  {'copying_s':>9}  {'server_s':>8}  "
        f"{'together/server':>15}  {'copying/server':>14}  server's way  same"
    )
    for name, texts in batches(args.rows).items():
        prompts = [encode_prompt(tokenizer, text) for text in texts]
        way = Batcher(model, tokenizer, max_batch_size=args.rows, prefix_cache_tokens=0)
        alone = way._cheaper_alone(prompts)
        way.stop()
        times: dict[str, list[float]] = {variant: [] for variant in variants}
        answers: dict[str, list[str]] = {}
        for _ in range(args.rounds):
            for variant, (server_way, in_place) in variants.items():
                seconds, answers[variant] = run(prompts, server_way, in_place)
                times[variant].append(seconds)
        together, copying, server = (statistics.median(times[variant]) for variant in variants)
        lengths = f"{min(map(len, prompts))}-{max(map(len, prompts))}"
        same = len({tuple(texts) for texts in answers.values()}) == 1
        print(
            f"{name:>6}  {lengths:>13}  {together:>10.2f}  {copying:>9.2f}  {server:>8.2f}  "
            f"{together / server:>14.2f}x  {copying / server:>13.2f}x  "
            f"{'alone' if alone else 'together':>12}  {same}"
        )
    print("\nratios: a variant's time over the server's (above 1: the server's way is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
