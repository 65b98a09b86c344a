"""The recipe a client names for a run: a shipped recipe by name, or a YAML file inside one of the API's
recipe folders, and the overrides it accepts; checked before any process starts."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.api.errors import ApiError
from repotune.errors import RepotuneError

RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

TUNABLE = frozenset(
    {
        "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler", "epochs", "max_steps", "max_epochs",
        "micro_batch_size", "gradient_accumulation_steps", "eval_every_steps", "seed",
        "lora.rank", "lora.alpha", "lora.dropout",
        "data.seq_len", "data.fim_rate", "data.spm_rate", "data.fim_window_chars", "data.max_eval_blocks",
        "data.max_train_blocks", "data.retrieval_rate", "data.retrieval_context_tokens",
    }
)  # fmt: skip
"""The recipe settings a client of the API may change: how the model trains, and on which blocks. What
the operator's recipe fixes stays fixed: the base model (a name or a path to read), where checkpoints
go (any bucket the server's keys reach), hardware and time budgets (resources, serving, max_minutes,
max_memory_gb), the embedding model, and the experiment."""
TUNABLE_GROUPS = ("data.kind_weights.",)
"""Groups of tunable settings: every key below them is."""


@dataclass(frozen=True)
class RecipeChoice:
    """A recipe a client chose for a run: a file in one of the API's recipe folders. The recipe itself
    is resolved by ``repotune run`` (``repotune.train.recipe.resolve_recipe``) from ``path``."""

    name: str
    """The recipe as the client named it (also what a KFP run is given)."""
    path: Path
    """The YAML file inside one of the configured recipe folders."""


def choose_recipe(value: str, folders: tuple[Path, ...]) -> RecipeChoice:
    """A shipped recipe by name (``tiny-cpu`` or ``tiny-cpu.yaml``), or an absolute path to a YAML file
    inside one of ``folders``; any other path is refused, so a client cannot make a run read arbitrary
    files."""
    known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
    hint = f"known recipes: {', '.join(known)}" if known else "no recipe folders are configured"
    if value.startswith("/"):
        path = Path(value).resolve()
        if (
            path.suffix in (".yaml", ".yml")
            and path.is_file()
            and any(path.is_relative_to(f) for f in folders)
        ):
            return RecipeChoice(path.stem, path)
        raise ApiError(422, "unknown_recipe", f"recipe {value!r} is not a file in a recipe folder; {hint}")
    name = value.removesuffix(".yaml").removesuffix(".yml")
    if not RECIPE_NAME.match(name) or ".." in name:
        raise ApiError(422, "unknown_recipe", f"recipe {value!r} is not a recipe name; {hint}")
    for folder in folders:
        for suffix in (".yaml", ".yml"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return RecipeChoice(name, path.resolve())
    raise ApiError(422, "unknown_recipe", f"no recipe named {name!r}; {hint}")


def check_overrides(recipe: RecipeChoice, overrides: dict[str, Any]) -> None:
    """Refuses overrides the recipe does not accept, before any process starts (422 naming the key)."""
    from repotune.train import resolve_recipe

    for key, value in overrides.items():
        if not OVERRIDE_KEY.match(key):
            raise ApiError(422, "invalid_overrides", f"override key {key!r} must look like data.seq_len")
        if key not in TUNABLE and not key.startswith(TUNABLE_GROUPS):
            raise ApiError(
                422,
                "invalid_overrides",
                f"override {key!r} is fixed by the server's recipe; a run may change "
                f"{', '.join(sorted(TUNABLE))} and data.kind_weights.*",
            )
        if isinstance(value, float) and not math.isfinite(value):
            # JSON has no NaN or Infinity, but Python's parser reads them (and 1e999 as Infinity).
            raise ApiError(422, "invalid_overrides", f"override {key!r} is {value}: give a finite number")
    try:
        resolve_recipe(str(recipe.path), overrides)
    except RepotuneError as exc:
        raise ApiError(422, "invalid_overrides", str(exc)) from None
