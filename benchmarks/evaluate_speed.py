#!/usr/bin/env python3
"""Evaluation speed: how evaluate scores against transformers' ``generate`` and one sample at a time.

The evaluate stage answers every line and FIM sample with the first non-blank line a model writes,
and scores perplexity over windows of held-out code. This times both ways of doing it on the same
samples in one process. Evaluate's way: up to ``--batch-size`` prompts decoded together by
``repotune.evaluate.generate.greedy_lines`` (on a CPU each prompt read alone, without padding,
from the kept cache of an earlier prompt that starts alike; a row leaves the batch when its line is
done), and ``--window-batch-size`` windows per forward pass with logits only at the scored positions.
The ``batched`` row decodes the same way but reads every prompt whole, to show what the kept caches
(``kept``) add. The baseline: transformers' own ``model.generate`` over
left-padded batches of ``--baseline-batch-size`` prompts with a per-row stop (how evaluate decoded
before ``greedy_lines``; ``--baseline-batch-size 32`` is that setup, the default 1 how evaluation
first scored), and windows ``--baseline-batch-size`` at a time with the whole output layer. The two
are interleaved (one round each, ``--rounds`` times) so a busy shared machine disturbs both alike;
ratios are of CPU time, which such a machine disturbs least, and wall time is printed beside it.
It also checks that both give the same completions, and prints the target (batched at least 2x
faster) as PASS/MISS; nothing is asserted.

Samples are drawn as the stage draws them (``repotune.evaluate.samples.draw_samples``) from the held-out
records of a clean folder (``--data DIR``), or, by default, from this repository's own Python files
treated as held out. The base model is converted once into the model cache (about 30 s).

Usage (from the repository root)::

    .venv/bin/python benchmarks/evaluate_speed.py
    .venv/bin/python benchmarks/evaluate_speed.py --data .demo/clean --lines 30 --baseline-batch-size 32
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from repotune.data.transforms import code_prompt
from repotune.evaluate import ScoringConfig
from repotune.evaluate.generate import (
    KEPT_PROMPTS,
    PREFIX_MIN_TOKENS,
    Completion,
    complete_lines,
    length_batches,
    line_done,
    prompt_ids,
    tokenized,
    window_nll,
    windows,
)
from repotune.evaluate.samples import draw_samples
from repotune.kvcache import PrefixCache
from repotune.models import resolve_base_model
from repotune.records import Kind, Record, read_records

ROOT = Path(__file__).resolve().parent.parent


def held_out(data: Path | None) -> list[Record]:
    if data is not None:
        return list(read_records(data / "eval.jsonl"))
    files = sorted((ROOT / "src" / "repotune").rglob("*.py"))
    return [
        Record(
            content=p.read_text(),
            kind=Kind.CODE,
            source="repotune",
            id=str(p),
            file_path=str(p.relative_to(ROOT)),
        )
        for p in files
    ]


def generate_lines(
    model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int
) -> list[Completion]:
    """The baseline: ``model.generate`` greedily over left-padded batches of prompts of like length,
    a row stopping once its first non-blank line is written (generate carries it on as padding until
    the batch ends)."""
    from transformers import GenerationConfig, StoppingCriteriaList

    from repotune.decoding import stop_token_ids
    from repotune.evaluate.generate import context_limit

    encoded = [prompt_ids(p, tokenizer, context_limit(model) - max_new_tokens) for p in prompts]
    eos = sorted(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=pad, eos_token_id=eos)  # fmt: skip
    results: list[Completion | None] = [None] * len(prompts)
    for rows in length_batches([len(ids) for ids, _ in encoded], batch_size):
        width = max(len(encoded[i][0]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            ids[row, width - len(encoded[index][0]) :] = torch.tensor(encoded[index][0])
            mask[row, width - len(encoded[index][0]) :] = 1
        after = [encoded[i][1] for i in rows]

        def stop(input_ids, scores, width=width, after=after, **kwargs):
            return torch.tensor([
                line_done(tokenizer.decode(input_ids[row, width:], skip_special_tokens=True), after_newline=a)
                for row, a in enumerate(after)
            ])  # fmt: skip

        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings,
                                 stopping_criteria=StoppingCriteriaList([stop]))  # fmt: skip
        for row, index in enumerate(rows):
            results[index] = Completion.from_tokens(
                out[row, width:].tolist(), tokenizer, eos, after_newline=after[row]
            )
    return [r for r in results if r is not None]


def timed(work) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a clean folder whose eval.jsonl to draw from")
    parser.add_argument("--lines", type=int, default=24, help="line completion samples (default 24)")
    parser.add_argument("--windows", type=int, default=16, help="perplexity windows (default 16)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (default 32)")
    parser.add_argument(
        "--window-batch-size", type=int, default=8, help="windows per forward pass (default 8)"
    )
    parser.add_argument(
        "--baseline-batch-size", type=int, default=1,
        help="the baseline's prompts and windows per call, with the full output layer (default 1)",
    )  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--context-chars", type=int, default=1500, help="file before the cursor (default 1500)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of both (default 1)")
    parser.add_argument(
        "--retrieval", type=int, default=0, metavar="TOKENS",
        help="also ask each line with up to TOKENS of context retrieved from --data's train.jsonl, as "
        "the retrieval arms do (the demo: 512); default 0, none",
    )  # fmt: skip
    args = parser.parse_args()

    config = ScoringConfig(
        line_samples=args.lines,
        fim_samples=0,
        forgetting_files=0,
        max_blocks=args.windows,
        context_chars=args.context_chars,
    )
    samples = draw_samples(held_out(args.data), config)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_base_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = [code_prompt(s.prefix, path=s.path, tokenizer=tokenizer) for s in samples.lines]
    if args.retrieval:
        if args.data is None:
            parser.error("--retrieval needs --data (its train.jsonl is what is searched)")
        from repotune.evaluate.score import retrieval_contexts
        from repotune.retrieval import RetrievalIndex

        index = RetrievalIndex.build(read_records(args.data / "train.jsonl"))
        found = retrieval_contexts(index, samples, tokenizer, args.retrieval).lines
        prompts += [code_prompt(s.prefix, path=s.path, tokenizer=tokenizer, context=context)
                    for s, context in zip(samples.lines, found, strict=True)]  # fmt: skip
    tokens = tokenized(samples.perplexity, tokenizer)
    chosen = windows(tokens, config.seq_len, config.max_blocks, config.seed)
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts)
    print(
        f"{len(prompts)} line prompts ({prompt_tokens:,} tokens), {len(chosen)} perplexity windows of up "
        f"to {config.seq_len} tokens",
        file=sys.stderr,
    )

    import repotune.evaluate.generate as generate

    keeps_logits = generate.keeps_logits
    # (rows per generate call, windows per forward pass, logits at scored positions only)
    setups = {
        "baseline": (args.baseline_batch_size, args.baseline_batch_size, False),
        "batched": (args.batch_size, args.window_batch_size, True),
        "kept": (args.batch_size, 0, True),  # lines only: its windows are the batched ones
    }
    totals = {("lines", name): [0.0, 0.0] for name in setups}
    totals |= {("perplexity", name): [0.0, 0.0] for name in ("baseline", "batched")}
    answers, losses, reused = {}, {}, 0
    for _ in range(args.rounds):
        for name, (rows, window_rows, scored_logits) in setups.items():
            # "kept": as the stage's scorer reads prompts on a CPU, each from the kept cache of an
            # earlier prompt that starts alike (the same retrieved chunks in front of two lines).
            kept = PrefixCache(model, PREFIX_MIN_TOKENS, entries=KEPT_PROMPTS) if name == "kept" else None
            decode = generate_lines if name == "baseline" else (
                lambda model, tokenizer, prompts, rows, most, kept=kept: complete_lines(
                    model, tokenizer, prompts, batch_size=rows, max_new_tokens=most, prefixes=kept)
            )  # fmt: skip
            done, wall, cpu = timed(
                lambda rows=rows, decode=decode: decode(model, tokenizer, prompts, rows, args.max_new_tokens)
            )
            answers[name] = done
            reused = kept.reused_tokens if kept is not None else reused
            totals["lines", name][0] += wall
            totals["lines", name][1] += cpu
            if not window_rows:
                continue
            generate.keeps_logits = keeps_logits if scored_logits else (lambda model: False)
            try:
                losses[name], wall, cpu = timed(
                    lambda window_rows=window_rows: window_nll(model, tokens, chosen, batch_size=window_rows)
                )
            finally:
                generate.keeps_logits = keeps_logits
            totals["perplexity", name][0] += wall
            totals["perplexity", name][1] += cpu

    print(f"{'task':<12} {'setup':<9} {'rows':>5} {'wall s':>8} {'cpu s':>8} {'per sample s':>13}")
    for (task, name), (wall, cpu) in totals.items():
        count = len(prompts) if task == "lines" else len(chosen)
        rows = setups[name][0] if task == "lines" else setups[name][1]
        each = wall / max(1, count * args.rounds)
        print(f"{task:<12} {name:<9} {rows:>5} {wall:>8.1f} {cpu:>8.1f} {each:>13.2f}")
    ratios = {}
    for task, before, after in (("lines", "baseline", "kept"), ("perplexity", "baseline", "batched"),
                                ("lines", "batched", "kept")):  # fmt: skip
        ratio = [b / a for b, a in zip(totals[task, before], totals[task, after], strict=True)]
        ratios.setdefault(task, (ratio[1], ratio[0]))
        print(f"{task}: {before} / {after} = {ratio[1]:.2f}x CPU time, {ratio[0]:.2f}x wall time")
    print(f"kept prefixes: {reused:,} of {prompt_tokens * args.rounds:,} prompt tokens not read again")
    same = answers["baseline"] == answers["batched"] == answers["kept"]
    close = all(
        a[1] == b[1] and abs(a[0] - b[0]) <= 1e-4 * max(1.0, abs(a[0]))
        for a, b in zip(losses["baseline"], losses["batched"], strict=True)
    )
    print(f"same completions in all setups: {same}; same perplexity sums (within 1e-4): {close}")
    print("targets:")
    verdict = "PASS" if ratios["lines"][0] >= 2 else "MISS"
    print(f"  {verdict} line completion as evaluate does it at least 2x faster than the baseline (CPU time)")
    print(f"  {'PASS' if same and close else 'MISS'} every setup gives the same numbers")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
