"""The fine-tuning recipe: LoRA (or QLoRA, or full) over transformers' Trainer and PEFT.

One explicit function, ``run_training``, reads the cleaned data, packs it into fixed-length blocks
whose position ids restart at every document (no attention across documents, almost no padding),
fine-tunes, and writes the model folder :class:`repotune.train.layout.TrainLayout` describes: the
merged model (it loads with AutoModelForCausalLM as it is), the LoRA adapter, the summary, a model
card, and the Trainer checkpoints a restarted run resumes from. ``repotune.train.run`` calls it in
this process; so does every process of a multi-node PyTorchJob (:mod:`repotune.train.cluster_entry`).

The same code runs under ``torchrun --nproc_per_node=N`` (Trainer does the DDP set-up); only rank 0
writes outputs and logs to MLflow.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from repotune.clean.layout import CleanLayout
from repotune.config import to_dict
from repotune.digest import files_digest
from repotune.errors import RepotuneError
from repotune.heldout import held_out_records
from repotune.records import Kind, Record, read_records
from repotune.train.layout import TrainLayout
from repotune.train.recipe import Recipe
from repotune.wording import counted


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))


def _read(path: Path) -> list[Record]:
    return list(read_records(path)) if path.is_file() else []


def load_split(data_dir: Path) -> tuple[list[Record], list[Record]]:
    """Training and held-out records from a `repotune clean` folder, refusing an empty training set."""
    data = CleanLayout(data_dir)
    if not data.train.is_file():
        raise RepotuneError(f"{data_dir} has no {data.train.name}; run `repotune clean` into it first")
    train = _read(data.train)
    if not train:
        raise RepotuneError(f"{data.train} is empty: nothing to train on (check the clean report's drops)")
    return train, _read(data.eval)


def _precision(recipe: Recipe) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if recipe.precision == "bf16" and not (cuda and torch.cuda.is_bf16_supported()):
        raise RepotuneError("precision: bf16 needs a GPU with bfloat16 support; use auto or fp32")
    if recipe.precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return recipe.precision


def _check_method(recipe: Recipe) -> None:
    import importlib.util

    import torch

    if recipe.method == "qlora" and not (
        torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")
    ):
        raise RepotuneError("method: qlora needs a CUDA GPU and the bitsandbytes package; use lora here")


def _check_memory(model_dir: Path, recipe: Recipe, precision: str) -> float:
    from repotune.train.architecture import estimate_training_memory_gb

    bytes_per_param = 2 if precision == "bf16" else 4
    estimate = estimate_training_memory_gb(
        model_dir, recipe.method, recipe.data.seq_len, recipe.micro_batch_size, bytes_per_param
    )
    if recipe.max_memory_gb is not None and estimate > recipe.max_memory_gb:
        raise RepotuneError(
            f"max_memory_gb: {recipe.base_model} needs about {estimate:.1f} GB to train with method "
            f"{recipe.method}, seq_len {recipe.data.seq_len} and micro_batch_size {recipe.micro_batch_size}, "
            f"more than the {recipe.max_memory_gb:g} GB allowed; lower those or use method: lora"
        )
    return estimate


def training_blocks(
    records: list[Record],
    tokenizer,
    recipe: Recipe,
    fim_rate: float,
    cache: Path,
    limit: int | None,
    retrieval_rate: float = 0.0,
    *,
    weighted: bool = False,
    mix: dict[str, int] | None = None,
    recent_mix: dict[str, int] | None = None,
):
    """Packed blocks of ``records``' examples. With ``weighted``, each example is repeated or thinned by
    the recipe's ``data.kind_weights`` (training data only: held-out blocks are scored as they are);
    ``mix``, when given, receives the tokens of each kind that went into the blocks (before ``limit``);
    ``recent_mix``, the code files the newest commits touched (``data.recent_commits``) and their tokens
    in the blocks, weighted."""
    from repotune.data.packing import pack, recent_files, tokenize_records, tokens_by_kind, weighted_indices
    from repotune.data.transforms import TransformConfig
    from repotune.retrieval.config import RetrievalConfig

    transforms = TransformConfig(
        fim_rate=fim_rate,
        spm_rate=recipe.data.spm_rate,
        seed=recipe.seed,
        fim_window_chars=recipe.data.fim_window_chars,
    )
    retrieval = RetrievalConfig(max_context_tokens=recipe.data.retrieval_context_tokens)
    if retrieval_rate > 0 and recipe.data.retrieval_embedding_model:
        from repotune.models.resolve import resolve_embedding_model

        embedder = resolve_embedding_model(recipe.data.retrieval_embedding_model)
        retrieval = replace(retrieval, embedding_model=str(embedder))
    sequences = tokenize_records(
        records, tokenizer, transforms, cache, retrieval_rate=retrieval_rate, retrieval=retrieval
    )
    recent = recent_files(records, recipe.data.recent_commits) if weighted else frozenset()
    if weighted:
        order = weighted_indices(
            records,
            recipe.data.kind_weights.as_mapping(),
            recipe.seed,
            recent=recent,
            recent_weight=recipe.data.recent_weight,
        )
        records, sequences = [records[i] for i in order], [sequences[i] for i in order]
    if mix is not None:
        mix.update(tokens_by_kind(records, sequences))
    if recent_mix is not None:
        chosen = [
            (r.file_path, len(seq))
            for r, seq in zip(records, sequences, strict=True)
            if r.kind is Kind.CODE and r.file_path in recent
        ]
        recent_mix.update(files=len({path for path, _ in chosen}), tokens=sum(n for _, n in chosen))
    blocks = pack(sequences, recipe.data.seq_len)
    return blocks if limit is None else blocks.head(limit)


def _recent_line(recipe: Recipe, recent_mix: dict[str, int], tokens: int) -> str:
    """What ``data.recent_commits`` did to the training tokens, for the training log."""
    commits = recipe.data.recent_commits
    if not commits:
        return ""
    if not recent_mix.get("files"):
        return f"the newest {commits} commits name no code files to weigh (none, or most of the code); "
    share = recent_mix["tokens"] / max(tokens, 1)
    files = counted(recent_mix["files"], "code file")
    weight = recipe.data.recent_weight
    return f"{files} the newest {commits} commits touched, x{weight:g}: {share:.0%} of tokens; "


def load_tokenizer(model_dir: Path, recipe: Recipe) -> tuple[Any, int, list[int]]:
    """The base tokenizer with a pad token and, when the recipe uses FIM, the FIM tokens.

    Returns the tokenizer, its vocabulary size before any token was added, and the ids of the FIM tokens
    that were added (their rows start untrained). A tokenizer with FIM tokens of its own (Qwen2.5-Coder's)
    keeps them: its model was pretrained to fill with them.
    """
    from transformers import AutoTokenizer

    from repotune.data.transforms import ensure_fim_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab_before = len(tokenizer)
    fim_ids = ensure_fim_tokens(tokenizer) if recipe.data.fim_rate > 0 else []
    return tokenizer, vocab_before, [i for i in fim_ids if i >= vocab_before]


def load_model(
    recipe: Recipe, model_dir: Path, tokenizer, *, precision: str, fim_ids: list[int], vocab_before: int
):
    """The base model in the recipe's dtype (4-bit for QLoRA), resized for added FIM tokens, adapted."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if recipe.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if len(tokenizer) != vocab_before:
        from transformers.utils import logging as hf_logging

        # The FIM tokens' rows start at the old embeddings' mean (transformers' mean_resizing, wanted
        # here), which transformers announces as a warning on every run.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model.resize_token_embeddings(len(tokenizer))
        finally:
            hf_logging.set_verbosity(level)
    return adapt_model(model, recipe, fim_ids)


def _checkpointing_argument(arguments: type) -> str:
    """TrainingArguments' name for activation checkpointing: ``activation_checkpointing`` in the
    transformers releases that renamed it (``gradient_checkpointing`` stays as a deprecated alias, to be
    removed in v6), ``gradient_checkpointing`` in the earlier 5.x releases the pin allows."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(arguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


FEW_STEPS = 20
"""Fewer optimizer steps than this, derived from ``epochs``, earn a warning (see ``few_steps_warning``)."""


def planned_steps(recipe: Recipe, blocks: int, blocks_per_step: int) -> tuple[int, str | None]:
    """Optimizer steps for ``blocks`` training blocks, and a note when ``max_epochs`` cut ``max_steps``.

    ``max_steps`` where set, held to ``max_epochs`` passes over the blocks; else ``epochs`` passes. A
    part-filled last batch counts as a step, as the Trainer's data loader gives one."""
    per_epoch = math.ceil(blocks / blocks_per_step)
    if recipe.max_steps is None:
        return max(1, math.ceil(per_epoch * recipe.epochs)), None
    if recipe.max_epochs is not None:
        cap = max(1, math.ceil(per_epoch * recipe.max_epochs))
        if cap < recipe.max_steps:
            return cap, (
                f"max_steps {recipe.max_steps} held to {cap}: {recipe.max_epochs:g} passes over {blocks} "
                f"training blocks, {blocks_per_step} a step (max_epochs). Trained over and over, a small "
                "repository's model recalls it and forgets general code"
            )
    return recipe.max_steps, None


def few_steps_warning(recipe: Recipe, total_steps: int, blocks: int, blocks_per_step: int) -> str | None:
    """What to change when ``epochs`` gives the data only a handful of optimizer steps, else None.

    A recipe sized for a large repository (the GPU recipes: 32 blocks of 2,048 tokens a step) gives a
    small one 2 to 8 steps; on the quality benchmark's projects that moved line edit similarity by
    under 6% (README, "On a GPU"). ``max_steps`` set by hand is taken as meant."""
    if recipe.max_steps is not None or total_steps >= FEW_STEPS:
        return None
    if recipe.gradient_accumulation_steps > 1:
        smaller = "--set gradient_accumulation_steps=1"
    elif recipe.micro_batch_size > 1:
        smaller = f"--set micro_batch_size={max(1, recipe.micro_batch_size // 4)}"
    else:
        smaller = None
    advice = f"take smaller steps ({smaller}) or more epochs" if smaller else "give it more epochs"
    return (
        f"warning: only {counted(total_steps, 'optimizer step')}: {counted(blocks, 'training block')}, "
        f"{blocks_per_step} a step, for {recipe.epochs:g} epochs. A model learns little in so few "
        f"steps; for a repository this small, {advice}"
    )


NOT_TRAINING = frozenset(
    {
        "save_every_steps",
        "save_total_limit",
        "checkpoint_uri",
        "eval_every_steps",
        "data.max_eval_blocks",
        "max_minutes",
        "max_memory_gb",
        "experiment",
        "resources",
        "serving",
        # recomputes the same activations in the backward pass: memory and time, not what is trained
        "gradient_checkpointing",
    }
)
"""Recipe settings (and groups) that change neither what is trained nor how: where and how often
checkpoints go, held-out scoring, budgets, tracking and cluster requests. A resume may change them
(a run stopped by ``max_minutes`` goes on with a larger budget)."""


def run_identity(recipe: Recipe | dict[str, Any], dataset_hash: str, world_size: int) -> dict[str, Any]:
    """What checkpoints must share with a run that resumes from them: the data's digest, every recipe
    setting that shapes training (``lora.rank``, ``learning_rate``, ``data.seq_len``, ``max_steps``...,
    dotted, all but ``NOT_TRAINING``) and the number of processes (the global batch is per device).
    ``recipe`` may be a recipe as a summary records it (``to_dict``)."""

    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            return {prefix[:-1]: value}
        return {
            key: item for name, sub in value.items() for key, item in flat(f"{prefix}{name}.", sub).items()
        }

    settings = {
        key: value
        for key, value in flat("", recipe if isinstance(recipe, dict) else to_dict(recipe)).items()
        if not {key, key.split(".")[0]} & NOT_TRAINING
    }
    return {"dataset_hash": dataset_hash, **settings, "world_size": world_size}


MANY_PASSES = 10
"""More passes than this over the training blocks, derived from ``max_steps``, earn a warning."""


def planned_passes(total_steps: int, blocks: int, blocks_per_step: int) -> float:
    """Passes over ``blocks`` training blocks that ``total_steps`` steps make (a pass's last step holds
    what is left, as the Trainer's data loader gives it)."""
    return total_steps / math.ceil(blocks / blocks_per_step)


def steps_line(total_steps: int, blocks: int, blocks_per_step: int, seq_len: int) -> str:
    """``20 steps of 4 blocks (512 tokens), 5 passes over the data``: the blocks a step actually holds,
    fewer than the batch size when there are fewer blocks, and "up to" when a pass ends part-filled."""
    held = min(blocks, blocks_per_step)
    up_to = "up to " if blocks > blocks_per_step and blocks % blocks_per_step else ""
    passes = planned_passes(total_steps, blocks, blocks_per_step)
    return (
        f"{counted(total_steps, 'step')} of {up_to}{counted(held, 'block')} ({held * seq_len} tokens), "
        f"{passes:.3g} pass{'es' if passes != 1 else ''} over the data"
    )


def many_passes_warning(recipe: Recipe, total_steps: int, blocks: int, blocks_per_step: int) -> str | None:
    """What to change when ``max_steps`` would pass over the training blocks more than ``MANY_PASSES``
    times, else None. ``max_epochs`` holds the steps to a number of passes (it is then taken as meant),
    and so does ``epochs`` when ``max_steps`` is unset."""
    passes = planned_passes(total_steps, blocks, blocks_per_step)
    if recipe.max_steps is None or recipe.max_epochs is not None or passes <= MANY_PASSES:
        return None
    return (
        f"warning: {counted(total_steps, 'step')} pass over the {counted(blocks, 'training block')} "
        f"{passes:.3g} times ({blocks_per_step} blocks a step). Trained over and over, a small repository's "
        "model recalls it and forgets general code: hold it to a few passes (--set max_epochs=3) or give it "
        "more data"
    )


def training_arguments(
    recipe: Recipe,
    output_dir: Path,
    total_steps: int,
    *,
    precision: str,
    has_eval: bool,
    use_cpu: bool | None = None,
    **overrides: Any,
):
    """The recipe's TrainingArguments; ``overrides`` (e.g. ``save_strategy="no"``) go straight through."""
    import torch
    from transformers import TrainingArguments

    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": recipe.micro_batch_size,
        "per_device_eval_batch_size": recipe.micro_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": int(recipe.warmup_ratio * total_steps),
        "lr_scheduler_type": recipe.lr_scheduler,
        "max_steps": total_steps,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": recipe.save_every_steps,
        # The Trainer's rotation deletes old checkpoints before the new one is complete; rotation is
        # done by checkpoints.CheckpointCommit instead, after the new one is marked complete.
        "save_total_limit": None,
        "eval_strategy": "steps" if recipe.eval_every_steps and has_eval else "no",
        "eval_steps": recipe.eval_every_steps,
        "bf16": precision == "bf16",
        _checkpointing_argument(TrainingArguments): recipe.gradient_checkpointing,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "report_to": [],
        "disable_tqdm": True,
        # tokens of the batches actually trained on (a step may hold fewer blocks than the batch size),
        # kept in the Trainer's state and so in each checkpoint
        "include_num_input_tokens_seen": "all",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "use_cpu": (not torch.cuda.is_available()) if use_cpu is None else use_cpu,
    }
    return TrainingArguments(**{**settings, **overrides})


def run_training(
    data_dir: Path,
    output: Path,
    recipe: Recipe,
    *,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune ``recipe.base_model`` on ``data_dir``'s train.jsonl into ``output``; returns the summary."""
    dist = Distributed.from_env()
    say = log if dist.is_main else (lambda _message: None)
    data, layout = CleanLayout(data_dir), TrainLayout(output)
    train_records, eval_records = load_split(data_dir)
    _check_method(recipe)
    precision = _precision(recipe)
    dataset_hash = files_digest(data.train, data.eval)  # evaluate compares it with the data it scores
    identity = run_identity(recipe, dataset_hash, dist.world_size)
    from repotune.train import checkpoints

    # before any work: checkpoints of another run or recipe in the folder are refused in seconds
    checkpoints.check_same_run(layout.checkpoints, identity, write=False)

    from repotune.models import resolve_base_model
    from repotune.tracking import (
        SUMMARY_RUN_ID_KEY,
        data_provenance,
        make_tracker,
        recipe_label,
        split_datasets,
        stage_run,
    )

    tracker = make_tracker(tracking_uri, recipe.experiment, rank=dist.rank)
    tracker.check()  # an unreachable tracking server is an error now, not after an hour of training
    model_dir = resolve_base_model(recipe.base_model)
    memory_gb = _check_memory(model_dir, recipe, precision)

    import torch
    from transformers import PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    from repotune.data.packing import PackedDataset
    from repotune.train import callbacks

    hf_logging.disable_progress_bar()  # weight-loading bars are noise in pipeline logs
    torch.manual_seed(recipe.seed)
    tokenizer, vocab_before, fim_ids = load_tokenizer(model_dir, recipe)
    cache = layout.token_cache
    # Retrieved context comes from an index over the training records alone (never held-out ones).
    mix: dict[str, int] = {}
    recent_mix: dict[str, int] = {}
    train_blocks = training_blocks(
        train_records,
        tokenizer,
        recipe,
        recipe.data.fim_rate,
        cache,
        recipe.data.max_train_blocks,
        recipe.data.retrieval_rate,
        weighted=True,
        mix=mix,
        recent_mix=recent_mix,
    )
    # Held-out blocks are plain next-token text (no FIM), so the base model, which has never seen
    # the FIM tokens, is scored on the same footing as the tuned one; and only what training does not
    # hold: in a temporal split, the lines added after the cut, not the whole files they sit in.
    eval_records = held_out_records(eval_records)
    # Blocks spread over all of it: the first blocks alone would be the first file or two.
    eval_blocks = training_blocks(eval_records, tokenizer, recipe, 0.0, cache, None) if eval_records else None
    if eval_blocks is not None and recipe.data.max_eval_blocks is not None:
        eval_blocks = eval_blocks.spread(recipe.data.max_eval_blocks)
    if len(train_blocks) == 0:
        raise RepotuneError(f"{data.train} gave no training tokens (with data.kind_weights applied)")

    blocks_per_step = recipe.micro_batch_size * recipe.gradient_accumulation_steps * dist.world_size
    total_steps, held = planned_steps(recipe, len(train_blocks), blocks_per_step)
    say(
        f"data: {counted(len(train_blocks), 'training block')} of {recipe.data.seq_len} tokens "
        f"({train_blocks.real_token_fraction:.1%} real; "
        + ", ".join(f"{kind} {count / max(sum(mix.values()), 1):.0%}" for kind, count in mix.items())
        + "), "
        + _recent_line(recipe, recent_mix, sum(mix.values()))
        + f"{counted(len(eval_blocks) if eval_blocks else 0, 'held-out block')}; "
        f"{steps_line(total_steps, len(train_blocks), blocks_per_step, recipe.data.seq_len)}; "
        f"estimated memory {memory_gb:.1f} GB"
    )
    notes = (
        held,
        few_steps_warning(recipe, total_steps, len(train_blocks), blocks_per_step),
        many_passes_warning(recipe, total_steps, len(train_blocks), blocks_per_step),
    )
    for note in notes:
        if note:
            say(note)

    checkpoint_dir = layout.checkpoints
    args = training_arguments(
        recipe, checkpoint_dir, total_steps, precision=precision, has_eval=eval_blocks is not None
    )
    progress = callbacks.Progress(total_steps, say, train_blocks.real_token_fraction)
    history = callbacks.RunHistory()
    # CheckpointCommit first: the upload must only ever see a checkpoint marked complete.
    save_callbacks: list[Any] = [checkpoints.CheckpointCommit(recipe.save_total_limit, identity)]
    upload = None
    if recipe.checkpoint_uri is not None:
        from repotune.train.checkpoint_sync import CheckpointUpload

        upload = CheckpointUpload(recipe.checkpoint_uri, say, keep=recipe.save_total_limit, run=identity)
        save_callbacks.append(upload)
    checkpoints.check_same_run(checkpoint_dir, identity, write=args.should_save)
    resume = _resume_point(args, checkpoint_dir, recipe.checkpoint_uri, say)
    if resume is not None:  # restored from checkpoint_uri, it may be another run's
        checkpoints.check_checkpoint_run(Path(resume), identity)
    # A rerun of a finished run has nothing to train: its model and summary stay as they are. (One
    # process alone decides: under torchrun every process would have to agree.)
    finished = _finished_summary(layout, resume, total_steps, identity) if dist.world_size == 1 else None
    if finished is not None:
        say(f"already trained: {finished['steps']} steps ({layout.summary} is this run's); nothing to do")
        return finished
    model = load_model(
        recipe, model_dir, tokenizer, precision=precision, fim_ids=fim_ids, vocab_before=vocab_before
    )
    # Training time over every run that went into the checkpoint resumed from, kept in it.
    clock = callbacks.TrainClock(checkpoints.train_seconds(Path(resume)) if resume else 0.0)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=PackedDataset(train_blocks),
        eval_dataset=PackedDataset(eval_blocks) if eval_blocks else None,
        callbacks=[
            progress,
            history,
            callbacks.TimeBudget(recipe.max_minutes),
            clock,
            callbacks.Tracking(tracker, train_blocks.real_token_fraction),
            *save_callbacks,
        ],
    )
    # Progress lines come from callbacks.Progress; the Trainer's own printer would repeat them as dicts.
    trainer.remove_callback(PrinterCallback)
    source = data_provenance(data_dir)
    with tracker.start_run(*stage_run("train", source, recipe_label(recipe.base_model, recipe.method))):
        for context, dataset in split_datasets(data_dir).items():
            tracker.log_dataset(dataset, context)
        tracker.log_params({"recipe": to_dict(recipe), "data": source})
        # A resumed run reads the base model's loss from its checkpoint's log history; a checkpoint
        # without it gets it scored now, before train() loads the checkpoint: until then the model is
        # the base one (LoRA's B matrices start at zero).
        base_eval = checkpoints.logged(Path(resume), callbacks.BASE_EVAL_LOSS) if resume else None
        if eval_blocks is not None and base_eval is None:
            base_eval = trainer.evaluate()["eval_loss"]
            say(f"base model eval loss {base_eval:.4f} ({len(eval_blocks)} held-out blocks)")
        if base_eval is not None:
            tracker.log_metrics({"base_eval_loss": base_eval}, step=0)
        history.base_eval_loss = base_eval
        if resume is not None:
            say(f"resuming from {resume}")
        trainer.train(resume_from_checkpoint=resume)
        train_seconds = clock.seconds
        tokens_seen = round(callbacks.real_tokens(trainer.state, train_blocks.real_token_fraction))
        final_eval = trainer.evaluate()["eval_loss"] if eval_blocks is not None else None
        losses = callbacks.step_losses(trainer.state.log_history)
        if final_eval is not None:
            say(f"tuned model eval loss {final_eval:.4f}")
            tracker.log_metrics({"eval_loss": final_eval}, step=trainer.state.global_step)
        summary = {
            "base_model": recipe.base_model,
            "base_model_dir": str(model_dir),
            "method": recipe.method,
            "precision": precision,
            "recipe": to_dict(recipe),
            "data": {
                **source,
                "train_records": len(train_records),
                "eval_records": len(eval_records),
                "train_blocks": len(train_blocks),
                "eval_blocks": len(eval_blocks) if eval_blocks else 0,
                "real_token_fraction": round(train_blocks.real_token_fraction, 4),
                # training tokens of each kind after data.kind_weights (what the mix really was)
                "tokens_by_kind": mix,
                # the code files the newest commits touched (data.recent_commits), and their tokens
                "recent_code": {"commits": recipe.data.recent_commits, **recent_mix},
            },
            "steps": trainer.state.global_step,
            "planned_steps": total_steps,
            "stopped_by_time_budget": progress.stopped_early(trainer.state.global_step),
            "resumed_from": resume,
            # over every step, the ones before a resume included (their losses come back with the
            # checkpoint's log history), so a resumed run reports what an uninterrupted one does
            "train_loss": callbacks.mean_loss(losses),
            "first_losses": [loss for _, loss in losses[:5]],
            "last_losses": [loss for _, loss in losses[-5:]],
            "base_eval_loss": base_eval,
            "eval_loss": final_eval,
            # training time of every step in the model, the runs before a resume included (up to
            # the checkpoint resumed from); and this run's part of it
            "train_seconds": round(train_seconds, 1),
            "train_seconds_this_run": round(train_seconds - clock.seconds_before, 1),
            # real (non-padding) tokens the steps held, over all processes and every run
            "tokens_seen": tokens_seen,
            # passes over the training blocks (the Trainer's count; more than epochs when max_steps
            # asks for more steps than one pass has)
            "epochs_seen": round(trainer.state.epoch or 0.0, 2),
            # tokens_seen over train_seconds; includes checkpoint saves, so a little below the step rate
            "tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1),
            "world_size": dist.world_size,
            "dataset_hash": dataset_hash,
            "fim_tokens_added": len(fim_ids) > 0 and len(tokenizer) != vocab_before,
            SUMMARY_RUN_ID_KEY: tracker.run_id,
            # checkpoint_uri's uploads: which reached the store, which failed and why; null when unset
            "publish": upload.report() if upload is not None else None,
        }
        if dist.is_main:
            _save(trainer.model, tokenizer, output, recipe, summary)
            if layout.adapter.is_dir():
                tracker.log_artifact(layout.adapter, "adapter")
            tracker.log_artifact(layout.summary)
        say(f"wrote {output}")
    return summary


def _finished_summary(
    layout: TrainLayout, resume: str | None, total_steps: int, identity: dict[str, Any]
) -> dict[str, Any] | None:
    """The summary in ``layout`` when it is the finished run of ``identity`` and ``resume``, its last
    checkpoint, leaves no step to train; else None (train, or resume, as usual)."""
    from repotune.train import checkpoints

    step = checkpoints.step_of(Path(resume)) if resume is not None else None
    if step is None or step < total_steps or not layout.config.is_file():
        return None
    try:
        summary = json.loads(layout.summary.read_text())
        ran = run_identity(summary["recipe"], summary["dataset_hash"], summary["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return summary if summary.get("steps") == step and ran == identity else None


def _resume_point(args, checkpoint_dir: Path, checkpoint_uri: str | None, say) -> str | None:
    """The newest complete checkpoint, locally or else restored from ``checkpoint_uri``; None for none.

    Incomplete checkpoints (a save cut short by a kill, a truncated file) are skipped with their
    reason and moved aside (see :mod:`repotune.train.checkpoints`). The processes that write
    checkpoints (the Trainer's ``should_save``: the main one, or each node's with
    ``save_on_each_node``) go first and alone move folders and download; the others then only look.
    """
    from repotune.train import checkpoints

    with args.main_process_first(local=args.save_on_each_node, desc="finding the checkpoint to resume"):
        latest = checkpoints.latest_complete(checkpoint_dir, say, move_aside=args.should_save)
        if latest is None and checkpoint_uri is not None and args.should_save:
            from repotune.train.checkpoint_sync import restore_latest_checkpoint

            # A pod that lost its disk resumes from the newest complete checkpoint in object storage.
            latest = restore_latest_checkpoint(checkpoint_uri, checkpoint_dir, log=say)
            if latest is not None:
                say(f"restored {latest.name} from {checkpoint_uri}")
    return str(latest) if latest is not None else None


def raise_if_unpublished(summary: dict[str, Any], output: Path) -> None:
    """Raises PublishError when ``checkpoint_uri`` was set and the run's newest checkpoint is not there.

    Called once the model is written (by the stage, and by each job process after its upload), so a
    failed publish costs the exit status, never the trained model.
    """
    from repotune.storage import PublishError

    publish = summary.get("publish")
    if not publish or publish["ok"]:
        return
    newest = publish["failed"][-1]
    attempts = len(publish["uploaded"]) + len(publish["failed"])
    raise PublishError(
        f"checkpoint_uri: {newest['checkpoint']}, the newest checkpoint, was not uploaded to "
        f"{publish['checkpoint_uri']} ({len(publish['failed'])} of {attempts} checkpoint uploads failed; "
        f"the model itself is complete in {output}, and train_summary.json lists each failure): "
        f"{newest['error']}",
        destination=publish["checkpoint_uri"],
    )


def adapt_model(model, recipe: Recipe, fim_ids: list[int]):
    if recipe.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from repotune.train.architecture import lora_target_modules

    if recipe.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.gradient_checkpointing
        )
    config = LoraConfig(
        r=recipe.lora.rank,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=list(recipe.lora.target_modules or lora_target_modules(model)),
        task_type="CAUSAL_LM",
        # Rows of FIM tokens added to the vocabulary start untrained; only those rows train.
        trainable_token_indices={"embed_tokens": fim_ids} if fim_ids else None,
    )
    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing`; nothing a user can change
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        model = get_peft_model(model, config)
    if fim_ids:
        # The FIM rows live in the adapter as trainable tokens, so the Trainer's checkpoints need not
        # carry the whole resized embedding and output matrices, which PEFT adds by default when the
        # vocabulary grew (246 MB of a SmolLM2-135M checkpoint's 266 MB). A resumed run resizes the base
        # model the same way (same seed, same tokens) before it loads a checkpoint.
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def _save(model, tokenizer, output: Path, recipe: Recipe, summary: dict[str, Any]) -> None:
    from repotune.atomic import atomic_open, umask, write_json

    layout = TrainLayout(output)
    output.mkdir(parents=True, exist_ok=True)
    if recipe.method != "full":
        adapter = layout.adapter
        shutil.rmtree(adapter, ignore_errors=True)
        # The FIM rows live in the adapter as trainable tokens; saving whole embedding matrices as
        # well would make a 135M model's adapter 100+ MB. Loading needs the base resized first.
        model.save_pretrained(adapter, save_embedding_layers=False)
        merged = model.merge_and_unload()
    else:
        merged = model
    merged.save_pretrained(output, safe_serialization=True)
    # transformers writes weights 0600 (through a private temporary file); the model's other files are
    # 0644, and a server running as another user (a KServe storage initializer, a shared volume) must
    # be able to read them all.
    for weights in [*output.glob("*.safetensors"), *layout.adapter.glob("*.safetensors")]:
        weights.chmod(0o666 & ~umask())
    tokenizer.save_pretrained(output)
    write_json(layout.summary, summary)
    with atomic_open(layout.model_card) as handle:
        handle.write(_model_card(summary))


def _model_card(summary: dict[str, Any]) -> str:
    data = summary["data"]
    lines = [
        "# repotune fine-tuned model",
        "",
        f"Base model: `{summary['base_model']}`, method: {summary['method']}, "
        f"precision: {summary['precision']}.",
        f"Trained on `{data.get('dataset.source', 'unknown source')}`"
        + (f" at commit `{data['dataset.commit']}`" if data.get("dataset.commit") else "")
        + f": {data['train_records']} records, {data['train_blocks']} blocks of "
        f"{summary['recipe']['data']['seq_len']} tokens, {summary['steps']} steps.",
        "",
    ]
    if summary["eval_loss"] is not None and summary["base_eval_loss"] is not None:
        lines += [
            f"Held-out loss: {summary['base_eval_loss']:.4f} (base) -> {summary['eval_loss']:.4f} (tuned), "
            f"on {data['eval_blocks']} blocks of held-out text the model never saw ({data['eval_records']} "
            "pieces: held-out files, or in a temporal split the runs of lines added after the cut).",
            "",
        ]
    # full fine-tuning writes no adapter: the folder's weights are the whole of the model
    adapter = "." if summary["method"] == "full" else "; the LoRA adapter alone is in `adapter/`."
    lines.append(f"Load it with `AutoModelForCausalLM.from_pretrained(<this folder>)`{adapter}")
    lines.append("Made by `repotune train`; `train_summary.json` has the full recipe and numbers.")
    return "\n".join(lines) + "\n"
