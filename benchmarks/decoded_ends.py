#!/usr/bin/env python3
"""Where each token's text ends: ``decoded_ends`` (blocks, each step decoded from a few tokens before
its block) vs decoding every prefix whole (``prefix_ends``, what it did before and falls back to).

``repotune serve`` needs these ends to cut a row's text into tokens: for every prompt scored with
``echo`` and ``logprobs`` (lm-evaluation-harness's log-likelihood requests), on the model's worker
thread, and for a row's tokens when its first line is decoded again. Decoding every prefix grows with
the square of the tokens. The text is the repository's own Python source, tokenized by ``--model``'s
tokenizer; each length is timed ``--repeats`` times both ways, alternated, and the two are checked to
agree. Nothing is asserted: it prints the best time of each way and the ratio.

Usage (from the repository root)::

    .venv/bin/python benchmarks/decoded_ends.py                          # SmolLM2's tokenizer
    .venv/bin/python benchmarks/decoded_ends.py --model FOLDER --lengths 500,2000,8000
"""

from __future__ import annotations

import argparse
import platform
import time

from harness import repository_source
from repotune.decoding import decoded_ends, prefix_ends
from repotune.models import resolve_base_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model folder or a base model's name")
    parser.add_argument("--lengths", default="250,1000,2000,4000,8000", help="tokens, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each way per length")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    folder = resolve_base_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer.encode(repository_source(), add_special_tokens=False)
    lengths = [int(n) for n in args.lengths.split(",")]
    if max(lengths) > len(tokens):
        parser.error(f"the source is {len(tokens)} tokens; ask for fewer")
    machine = platform.processor() or platform.machine()
    print(f"tokenizer {folder.name}, {machine}, Python {platform.python_version()}")
    print(f"{'tokens':>7} {'prefix by prefix':>17} {'in blocks':>10} {'ratio':>7}  same")
    for length in lengths:
        part = tokens[:length]
        whole, blocks, same = [], [], True
        for _ in range(args.repeats):
            start = time.perf_counter()
            exact = prefix_ends(part, tokenizer, range(length))
            middle = time.perf_counter()
            fast = decoded_ends(part, tokenizer)
            whole.append(middle - start)
            blocks.append(time.perf_counter() - middle)
            same = same and fast == exact
        print(
            f"{length:>7} {min(whole) * 1000:>14.1f} ms {min(blocks) * 1000:>7.1f} ms "
            f"{min(whole) / min(blocks):>6.1f}x  {'yes' if same else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
