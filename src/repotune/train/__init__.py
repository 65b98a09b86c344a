"""The train stage: ``run(TrainConfig) -> TrainResult``; ``TrainLayout`` names the model folder's files.

The recipe (``Recipe``, resolved from a shipped name, a path or YAML text by ``resolve_recipe``) is
the stage's configuration of what to train; it is exported here with the stage.
"""

from repotune.train.layout import TrainLayout
from repotune.train.recipe import (
    DEFAULT_RECIPE,
    Recipe,
    ResourceSettings,
    resolve_recipe,
    shipped_recipes_dir,
)
from repotune.train.stage import TrainConfig, TrainResult, run

__all__ = [
    "DEFAULT_RECIPE",
    "Recipe",
    "ResourceSettings",
    "TrainConfig",
    "TrainLayout",
    "TrainResult",
    "resolve_recipe",
    "run",
    "shipped_recipes_dir",
]
