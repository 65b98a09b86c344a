"""The train stage: ``run(TrainConfig) -> TrainResult``; ``TrainLayout`` names the model folder's files."""

from repotune.train.layout import TrainLayout
from repotune.train.stage import TrainConfig, TrainResult, run

__all__ = ["TrainConfig", "TrainLayout", "TrainResult", "run"]
