#!/usr/bin/env python3
"""Training throughput: repotune's recipe against a padded baseline and a hand-written PyTorch loop.

One run, one data set, one base model, three variants, each on a freshly loaded model with the same
LoRA adapter initialisation:

* ``repotune``: the recipe of ``repotune train``: the data goes through ``finetune.training_blocks``
  (``tokenize_records`` + ``pack``: fixed-length blocks whose position ids restart at each document),
  ``PackedDataset``, and transformers' ``Trainer`` with the recipe's ``TrainingArguments`` and callbacks.
* ``naive``: the same Trainer set-up, model, LoRA and optimizer over one example per file, each file
  cut to ``--seq-len`` tokens and padded to the longest in its batch (``padded_batches``, with an
  ``attention_mask``): padding is computed but does not count as throughput.
* ``hand loop``: the same packed batches and LoRA model, with nothing but ``torch.optim.AdamW``
  (fused, as the Trainer's default ``adamw_torch_fused``), forward, ``loss.backward()``, ``step()``
  and ``zero_grad()``: the bound that the Trainer's overhead is measured against.

Each variant runs ``--warmup-steps`` untimed optimizer steps, then ``--steps`` timed ones. Tokens/s
counts real (non-padding) tokens only. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA,
the process's RSS high-water mark (``getrusage``, reset between variants through
``/proc/self/clear_refs``) on CPU. MFU, on known NVIDIA GPUs in bf16, is 6 * parameters * real tokens
per second over the GPU's dense bf16 peak: the usual full-training estimate, which overstates what
LoRA computes (no weight gradients for the frozen weights: closer to 4 * parameters per token).

Usage (from the repository root)::

    .venv/bin/python benchmarks/train_throughput.py --model tiny --steps 6      # a quick check
    .venv/bin/python benchmarks/train_throughput.py --steps 6                   # smollm2-135m on CPU
    .venv/bin/python benchmarks/train_throughput.py --data DIR --seq-len 2048 --batch-size 8 \\
        --recipe configs/qwen2.5-coder-0.5b-gpu.yaml --model Qwen/Qwen2.5-Coder-0.5B --json out.json

Without ``--data`` it ingests and cleans this repository into a temporary folder first. The targets
(repotune >= 1.5x naive tokens/s, >= 0.90x the hand loop, >= 98% real tokens) are printed as
PASS/MISS, never asserted; the exit status is 0 when every variant ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import MB, log, print_table, print_targets, status, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = REPO_ROOT / "configs" / "smollm2-135m-cpu.yaml"

PACKING_SPEEDUP_TARGET = 1.5
HAND_LOOP_RATIO_TARGET = 0.90
REAL_FRACTION_TARGET = 0.98

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, matched in this order against
# torch.cuda.get_device_name(); the first substring that matches wins.
PEAK_BF16_FLOPS = (
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
)

VARIANTS = ("repotune", "naive", "hand")
LABELS = {
    "repotune": "repotune (packed, Trainer)",
    "naive": "naive (padded, Trainer)",
    "hand": "hand loop (packed, torch)",
}


@dataclass
class Result:
    variant: str
    label: str
    ok: bool = False
    error: str | None = None
    steps: int = 0
    seconds: float = 0.0
    real_tokens: int = 0
    computed_tokens: int = 0
    peak_memory_mb: float | None = None
    start_memory_mb: float | None = None
    """Memory held when the variant started (before its model loaded): what earlier ones left behind."""
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    """Each measured step's wall time, to see the spread (the machine may be shared)."""
    tokens_per_s: float | None = None
    steps_per_s: float | None = None
    real_fraction: float | None = None
    mfu: float | None = None

    def finish(self, flops_per_token: float, peak_flops: float | None) -> None:
        self.ok = True
        self.tokens_per_s = self.real_tokens / self.seconds
        self.steps_per_s = self.steps / self.seconds
        self.real_fraction = self.real_tokens / self.computed_tokens
        if peak_flops:
            self.mfu = flops_per_token * self.tokens_per_s / peak_flops


class Device:
    """Where the variants run, with the timing barrier and peak-memory reading that fit it."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.cuda = name == "cuda"
        self.type = name
        self.memory_note = ""

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            return
        # Hand freed heap pages back first, so the next variant's high-water mark starts from what it
        # actually holds rather than from the previous variant's leftovers.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            # "5" resets the kernel's peak-RSS counter that getrusage reports (Linux >= 4.0).
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.memory_note = (
                "peak RSS could not be reset between variants: each is the process's peak so far"
            )

    def peak_mb(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / MB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def current_mb(self) -> float:
        if self.cuda:
            return self.torch.cuda.memory_allocated() / MB
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB

    def memory_label(self) -> str:
        return "peak CUDA MB" if self.cuda else "peak RSS MB"


def default_data(work: Path) -> Path:
    """``repotune ingest`` + ``repotune clean`` of this repository, into ``work``."""
    from repotune import clean, ingest
    from repotune.clean import CleanConfig
    from repotune.ingest import IngestConfig

    ingested = ingest.run(IngestConfig(source=str(REPO_ROOT), output=work / "ingest"))
    clean.run(CleanConfig(input=work / "ingest", output=work / "clean"))
    log(f"data: {ingested.records} records ingested from {REPO_ROOT} into {work / 'clean'}")
    return work / "clean"


def spread(available: int, needed: int) -> list[int]:
    """``needed`` indices into ``range(available)``, spread evenly over it; cycling if there are too few."""
    if needed <= available:
        return [i * available // needed for i in range(needed)]
    return [i % available for i in range(needed)]


def peak_bf16_flops(device: Device, precision: str) -> tuple[float | None, str]:
    if not device.cuda:
        return None, "no MFU on CPU"
    name = device.torch.cuda.get_device_name()
    if precision != "bf16":
        return None, f"{name}: MFU only for bf16 runs"
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops, f"{name}: dense bf16 peak {flops / 1e12:.0f} TFLOP/s"
    return None, f"{name}: peak bf16 FLOP/s unknown, no MFU"


def build_model(recipe: Any, model_dir: Path, tokenizer: Any, vocab_before: int, fim_ids: list[int]):
    """The recipe's model through ``finetune.load_model``, and the base parameter count (for 6 * N FLOPs)."""
    import torch

    from repotune.train import finetune

    torch.manual_seed(recipe.seed)
    model = finetune.load_model(
        recipe, model_dir, tokenizer, precision=recipe.precision, fim_ids=fim_ids, vocab_before=vocab_before
    )
    base_params = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    return model, base_params


def training_arguments(recipe: Any, output_dir: Path, total_steps: int, *, use_cpu: bool, sequential: bool):
    """The recipe's TrainingArguments with checkpoints and evaluation off: they are not throughput."""
    from repotune.train import finetune

    return finetune.training_arguments(
        recipe,
        output_dir,
        total_steps,
        precision=recipe.precision,
        has_eval=False,
        use_cpu=use_cpu,
        save_strategy="no",
        # The naive variant's rows come pre-grouped into padded batches; order keeps them together.
        train_sampling_strategy="sequential" if sequential else "random",
    )


def run_trainer(model, recipe: Any, dataset, total_steps: int, work: Path, device: Device, sequential: bool):
    """Train with the recipe's Trainer and callbacks; returns the step timer and the logged losses."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    from repotune.tracking import NullTracker
    from repotune.train import callbacks

    args = training_arguments(
        recipe, work / "checkpoints", total_steps, use_cpu=not device.cuda, sequential=sequential
    )
    progress = callbacks.Progress(total_steps, lambda _line: None)
    timer = make_step_timer(device)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        callbacks=[
            progress,
            callbacks.TimeBudget(None),
            callbacks.Tracking(NullTracker()),
            timer,
        ],
    )
    # disable_tqdm makes the Trainer print every log dict; the output here is the table.
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return timer, progress.losses


def make_step_timer(device: Device):
    """A Trainer callback that times each optimizer step; built here so --help needs no transformers."""
    from transformers import TrainerCallback

    class _StepTimer(TrainerCallback):
        """Wall-clock time of each optimizer step, taken at step ends after a device barrier."""

        def __init__(self, device: Device) -> None:
            self.device = device
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.device.sync()
            self.ends = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.device.sync()
            self.ends.append(time.perf_counter())

    return _StepTimer(device)


def hand_loop(model, recipe: Any, batches: list[dict], device: Device) -> tuple[list[float], list[float]]:
    """Forward, backward, AdamW step, zero_grad over ``batches``; returns step end times and losses."""
    import torch

    dev = torch.device(device.type)
    model.to(dev)
    model.train()
    if recipe.gradient_checkpointing:
        # What the Trainer does for activation_checkpointing=True.
        model.activation_checkpointing_enable()
    # The Trainer's default optimizer is adamw_torch_fused with these settings (no decay groups matter
    # at the recipe's weight_decay of 0).
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        fused=True,
    )
    bf16 = recipe.precision == "bf16"
    losses = []
    device.sync()
    ends = [time.perf_counter()]
    for batch in batches:
        inputs = {key: value.to(dev, non_blocking=True) for key, value in batch.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            # use_cache=False: with a KV cache transformers would not find the packed documents in
            # position_ids and would let attention cross them.
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        device.sync()
        ends.append(time.perf_counter())
    return ends, [float(loss) for loss in losses]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, help="a `repotune clean` output folder (train.jsonl); default: this repo"
    )
    p.add_argument(
        "--model", default="smollm2-135m", help="base model: `smollm2-135m`, `tiny`, a folder, ..."
    )
    p.add_argument(
        "--recipe", type=Path, default=DEFAULT_RECIPE, help="recipe for LoRA, FIM rate, learning rate, seed"
    )
    p.add_argument(
        "--seq-len", type=int, default=256, help="tokens per packed block (and per naive row at most)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="blocks (or files) per optimizer step")
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps per variant")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed optimizer steps per variant first")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="bf16 on a GPU with it"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma list of repotune, naive, hand, run in this order (all three for the ratios)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if (
        not args.variants
        or set(args.variants) - set(VARIANTS)
        or len(set(args.variants)) < len(args.variants)
    ):
        p.error(f"--variants: a comma list of distinct names from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1:
        p.error("--steps and --batch-size must be at least 1, --warmup-steps at least 0")
    return args


def resolve_device_and_precision(args: argparse.Namespace) -> tuple[str, str]:
    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no CUDA device")
    device = args.device if args.device != "auto" else ("cuda" if cuda else "cpu")
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    if args.precision == "bf16" and not bf16_ok:
        raise SystemExit(
            "--precision bf16 needs a CUDA GPU with bfloat16 support (the recipe refuses it too)"
        )
    precision = args.precision if args.precision != "auto" else ("bf16" if bf16_ok else "fp32")
    return device, precision


def print_results(results: list[Result], device: Device) -> None:
    head = [
        "variant",
        "steps",
        "s/step",
        "steps/s",
        "real tok/step",
        "real %",
        "tokens/s",
        device.memory_label(),
        "MFU (6N)",
    ]
    rows = []
    for r in results:
        if not r.ok:
            rows.append([r.label, "failed", *["-"] * (len(head) - 2)])
            continue
        rows.append(
            [
                r.label,
                str(r.steps),
                f"{r.seconds / r.steps:.3f}",
                f"{r.steps_per_s:.2f}",
                f"{r.real_tokens / r.steps:,.0f}",
                f"{100 * r.real_fraction:.1f}",
                f"{r.tokens_per_s:,.0f}",
                "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:,.0f}",
                "-" if r.mfu is None else f"{100 * r.mfu:.1f}%",
            ]
        )
    print_table(head, rows, left=1)


def targets(by: dict[str, Result], packed_fraction: float) -> list[dict[str, Any]]:
    def ratio(a: str, b: str) -> float | None:
        if a in by and b in by and by[a].ok and by[b].ok:
            return by[a].tokens_per_s / by[b].tokens_per_s
        return None

    entries = []
    for name, value, goal in (
        ("repotune tokens/s >= 1.5x naive", ratio("repotune", "naive"), PACKING_SPEEDUP_TARGET),
        ("repotune tokens/s >= 0.90x hand loop", ratio("repotune", "hand"), HAND_LOOP_RATIO_TARGET),
        (
            "repotune real tokens >= 98% of computed (all training blocks)",
            packed_fraction,
            REAL_FRACTION_TARGET,
        ),
    ):
        verdict = status(value, goal, missing="N/A (a variant failed or did not run)")
        entries.append({"target": name, "value": value, "goal": goal, "status": verdict})
    return entries


def _target_value(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "-"
    return f"{entry['value']:.2%}" if "%" in entry["target"] else f"{entry['value']:.2f}x"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device_name, precision = resolve_device_and_precision(args)

    import numpy as np
    import torch

    from repotune.data.packing import PackedBlocks, PackedDataset, padded_batches, tokenize_records
    from repotune.data.transforms import TransformConfig
    from repotune.models import resolve_base_model
    from repotune.train import finetune
    from repotune.train.recipe import load_recipe

    device = Device(device_name)
    per_variant = args.warmup_steps + args.steps
    recipe = load_recipe(
        args.recipe,
        {
            "base_model": args.model,
            "data.seq_len": args.seq_len,
            "micro_batch_size": args.batch_size,
            # One micro-batch per optimizer step: --batch-size is what each forward pass sees.
            "gradient_accumulation_steps": 1,
            "precision": precision,
            "max_steps": per_variant,
            "max_minutes": None,
            "checkpoint_uri": None,
        },
    )

    with tempfile.TemporaryDirectory(prefix="repotune-train-bench-") as tmp:
        work = Path(tmp)
        data_dir = args.data or default_data(work)
        train_records, _ = finetune.load_split(data_dir)
        model_dir = resolve_base_model(recipe.base_model)
        torch.manual_seed(recipe.seed)
        tokenizer, vocab_before, fim_ids = finetune.load_tokenizer(model_dir, recipe)
        cache = work / "token-cache"

        seq_len, batch_size = recipe.data.seq_len, recipe.micro_batch_size
        # The recipe's own data path; tokenize_records below reads the same token cache.
        blocks = finetune.training_blocks(train_records, tokenizer, recipe, recipe.data.fim_rate, cache, None)
        sequences = tokenize_records(
            train_records,
            tokenizer,
            TransformConfig(fim_rate=recipe.data.fim_rate, spm_rate=recipe.data.spm_rate, seed=recipe.seed),
            cache,
        )
        naive = padded_batches([s[:seq_len] for s in sequences], batch_size, tokenizer.pad_token_id)

        # Only the final packed block holds padding; the measured blocks are full ones, and the whole
        # data's packing efficiency is reported (and targeted) separately.
        full_blocks = blocks.real_tokens // seq_len or len(blocks)
        block_ids = spread(full_blocks, per_variant * batch_size)
        packed_real = [min(max(blocks.real_tokens - i * seq_len, 0), seq_len) for i in block_ids]
        ids = np.array(block_ids)
        selected = PackedBlocks(
            blocks.input_ids[ids], blocks.position_ids[ids], blocks.labels[ids], sum(packed_real)
        )
        full_batches = [b for b in naive.batches if len(b["input_ids"]) == batch_size] or naive.batches
        naive_batches = [full_batches[i] for i in spread(len(full_batches), per_variant)]

        data_info = {
            "data_dir": str(data_dir),
            "train_records": len(train_records),
            "tokens": int(sum(len(s) for s in sequences)),
            "packed_blocks": len(blocks),
            "packed_real_fraction": blocks.real_token_fraction,
            "naive_batches": len(naive.batches),
            "naive_real_fraction": naive.real_token_fraction,
            "naive_tokens_kept": naive.real_tokens,
            "cycled": per_variant * batch_size > full_blocks or per_variant > len(full_batches),
        }
        log(
            f"data: {len(train_records)} training records, {data_info['tokens']:,} tokens; "
            f"{len(blocks)} packed blocks of {seq_len} ({blocks.real_token_fraction:.1%} real); "
            f"{len(naive.batches)} padded batches ({naive.real_token_fraction:.1%} real)"
        )

        results: list[Result] = []
        base_params = trainable = 0
        for variant in args.variants:
            result = Result(variant, LABELS[variant])
            results.append(result)
            log(f"running {result.label}: {args.warmup_steps} warm-up + {args.steps} measured steps")
            model = None
            try:
                device.reset_peak()
                result.start_memory_mb = round(device.current_mb(), 1)
                model, base_params = build_model(recipe, model_dir, tokenizer, vocab_before, fim_ids)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                if variant == "repotune":
                    timer, result.losses = run_trainer(
                        model, recipe, PackedDataset(selected), per_variant, work, device, sequential=False
                    )
                    ends = timer.ends
                    # The Trainer shuffles the blocks, but the selected ones are all full, so which of
                    # them fell in the warm-up does not change the count.
                    measured_real = sum(packed_real[args.warmup_steps * batch_size :])
                    result.computed_tokens = args.steps * batch_size * seq_len
                elif variant == "naive":
                    rows = [
                        {
                            key: torch.from_numpy(batch[key][row])
                            for key in ("input_ids", "attention_mask", "labels")
                        }
                        for batch in naive_batches
                        for row in range(len(batch["input_ids"]))
                    ]
                    timer, result.losses = run_trainer(
                        model, recipe, rows, per_variant, work, device, sequential=True
                    )
                    ends = timer.ends
                    measured = naive_batches[args.warmup_steps :]
                    measured_real = sum(int(b["attention_mask"].sum()) for b in measured)
                    result.computed_tokens = sum(b["attention_mask"].size for b in measured)
                else:
                    batches = [
                        {
                            "input_ids": torch.from_numpy(selected.input_ids[i : i + batch_size]).long(),
                            "position_ids": torch.from_numpy(
                                selected.position_ids[i : i + batch_size]
                            ).long(),
                            "labels": torch.from_numpy(selected.labels[i : i + batch_size]).long(),
                        }
                        for i in range(0, len(selected), batch_size)
                    ]
                    ends, result.losses = hand_loop(model, recipe, batches, device)
                    measured_real = sum(packed_real[args.warmup_steps * batch_size :])
                    result.computed_tokens = args.steps * batch_size * seq_len
                measured_ends = ends[args.warmup_steps : per_variant + 1]
                result.seconds = measured_ends[-1] - measured_ends[0]
                result.step_seconds = [round(b - a, 4) for a, b in itertools.pairwise(measured_ends)]
                result.steps = args.steps
                result.real_tokens = measured_real
                result.peak_memory_mb = device.peak_mb()
                peak, _ = peak_bf16_flops(device, precision)
                result.finish(6.0 * base_params, peak)
                first, last = result.losses[0], result.losses[-1]
                log(f"  {result.tokens_per_s:,.0f} tokens/s, loss {first:.3f} -> {last:.3f}")
            except Exception as err:  # one failed variant should not hide the others' numbers
                result.error = f"{type(err).__name__}: {err}"
                log(f"  failed: {result.error}\n{traceback.format_exc()}")
            finally:
                del model

    by = {r.variant: r for r in results}
    _, mfu_note = peak_bf16_flops(device, precision)
    print(
        f"\nmachine: {platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{device.type}"
        + (f" ({torch.cuda.get_device_name()})" if device.cuda else f", {torch.get_num_threads()} threads")
        + f", {os.cpu_count()} CPUs"
    )
    print(
        f"model: {args.model} ({base_params / 1e6:.1f} M parameters, {trainable / 1e6:.2f} M trainable: "
        f"{recipe.method} rank {recipe.lora.rank}), {precision}; recipe {args.recipe.name}; "
        f"seq_len {seq_len}, batch {batch_size}; {args.warmup_steps} warm-up + {args.steps} measured steps"
    )
    print(
        f"data: {data_info['train_records']} records, {data_info['tokens']:,} tokens; packed: "
        f"{data_info['packed_blocks']} blocks, {data_info['packed_real_fraction']:.2%} real; naive "
        f"(files cut to {seq_len}): {data_info['naive_batches']} batches, "
        f"{data_info['naive_real_fraction']:.2%} real, {data_info['naive_tokens_kept']:,} tokens kept"
        + ("; too few blocks or batches, so some were used twice" if data_info["cycled"] else "")
    )
    print()
    print_results(results, device)
    print(
        "\ntokens/s and real tok/step count real tokens only; real % is of the measured batches. "
        f"{device.memory_label()}: "
        + ("torch.cuda.max_memory_allocated" if device.cuda else "RSS high-water mark (getrusage)")
        + f" of each variant, model included. MFU: {mfu_note}; 6N overstates LoRA's work."
        + (f" Note: {device.memory_note}." if device.memory_note else "")
    )
    entries = targets(by, blocks.real_token_fraction)
    print_targets(f"{e['target']}: {e['status']} ({_target_value(e)})" for e in entries)

    if args.json:
        payload = {
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "device": device.type,
                "device_name": torch.cuda.get_device_name() if device.cuda else None,
                "cpus": os.cpu_count(),
                "threads": torch.get_num_threads(),
            },
            "settings": {
                **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "precision": precision,
                "recipe_path": str(args.recipe),
            },
            "model": {"base_params": base_params, "trainable_params": trainable, "method": recipe.method},
            "data": data_info,
            "results": [asdict(r) for r in results],
            "targets": entries,
            "mfu_note": mfu_note,
        }
        write_json(args.json, payload, default=float)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
