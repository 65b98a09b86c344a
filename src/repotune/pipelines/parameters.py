"""The pipeline's parameters as the stages take them: the KFP boundary, without KFP.

KFP parameters cannot be null, so at this boundary only ``0`` (numbers) and ``""`` (text) stand for
"not set", and become ``None`` before they reach the library; dict parameters arrive as protobuf
Structs whose numbers are all floats (:func:`repotune.config.from_struct`). The component shims call
these functions, so what a step does with its parameters is tested here without KFP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from repotune.config import from_struct
from repotune.errors import RepotuneError

RESUME_ENV = "REPOTUNE_RESUME_UNDER"
"""Set by `repotune run` to a folder of its work folder: kfp.local gives each run of the train step a
new output folder, so its checkpoints are saved under this one, where a rerun finds them."""


def train_settings(
    *,
    base_model: str,
    learning_rate: float,
    lora_rank: int,
    max_steps: int,
    epochs: float,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Recipe settings (dotted keys) for the train step's parameters.

    Precedence, from weakest: the recipe; the typed parameters; ``overrides`` (the ``training`` dict).
    ``max_steps`` 0 means unset, and then ``epochs`` decides how long training runs; a positive
    ``max_steps`` decides (held to the recipe's ``max_epochs`` passes where it sets one), and ``epochs``
    has no effect (transformers' own rule). The pipeline's
    defaults are the recipe's values, so a recipe with ``max_steps`` (the CPU demo's 40) trains 40
    steps until a run sets ``max_steps`` to 0 and an ``epochs``.
    """
    if max_steps < 0:
        raise RepotuneError(f"max_steps {max_steps}: give a number of steps, or 0 to train for `epochs`")
    settings = {
        "base_model": base_model,
        "learning_rate": learning_rate,
        "lora.rank": lora_rank,
        "max_steps": max_steps or None,
        "epochs": epochs,
    }
    return {**settings, **from_struct(overrides)}


SCORING_SETTINGS = ("base_model", "data.retrieval_rate", "data.retrieval_context_tokens")
"""The recipe settings the base model's scores depend on: the model, and the budget of retrieved context
its retrieval arm gets (the candidate's, where training gave examples context)."""
INDEX_SETTINGS = ("data.retrieval_embedding_model",)
"""The recipe settings the retrieval index depends on."""


def base_settings(recipe: str, base_model: str, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The recipe settings of a run that the score-base and retrieval-index steps read, by dotted key
    (``{"scoring": {...}, "index": {...}}``; unset ones left out), and nothing else: KFP's cache keys
    a step by its inputs, so a run that changes only what training does reuses their outputs."""
    from repotune.config import to_dict
    from repotune.train import resolve_recipe

    chosen = to_dict(resolve_recipe(recipe, {"base_model": base_model, **from_struct(overrides)})[0])

    def pick(keys: tuple[str, ...]) -> dict[str, Any]:
        values = {key: _dotted(chosen, key) for key in keys}
        return {key: value for key, value in values.items() if value is not None}

    return {"scoring": pick(SCORING_SETTINGS), "index": pick(INDEX_SETTINGS)}


def as_recipe(settings: dict[str, Any]) -> dict[str, Any]:
    """Dotted settings (one of :func:`base_settings`'s) as the recipe dict that ``train_summary.json``
    holds and the scoring and retrieval code reads: ``{"base_model": ..., "data": {...}}``."""
    recipe: dict[str, Any] = {}
    for key, value in from_struct(settings).items():
        *parents, name = key.split(".")
        place = recipe
        for parent in parents:
            place = place.setdefault(parent, {})
        place[name] = value
    return recipe


def _dotted(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None  # type: ignore[assignment]
    return values


def optional(value: str) -> str | None:
    """A text parameter, with ``""`` (KFP's stand-in for null) as None."""
    return value or None


def resume_folder(source: str, commit: str) -> Path | None:
    """Where the train step keeps its checkpoints for a rerun to resume from, for one source and commit
    (``REPOTUNE_RESUME_UNDER/<repository>/<commit>``); None where nothing sets it (a cluster: a pod's
    disk does not outlive it, and checkpoints go to ``artifacts_root`` instead)."""
    from repotune.storage import output_prefix

    root = os.environ.get(RESUME_ENV)
    return Path(output_prefix(root, source, commit)) if root else None
