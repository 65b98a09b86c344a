"""The clean stage: ``run(CleanConfig) -> CleanResult``; ``CleanLayout`` names the folder's files."""

from repotune.clean.layout import CleanLayout
from repotune.clean.stage import CleanConfig, CleanResult, run

__all__ = ["CleanConfig", "CleanLayout", "CleanResult", "run"]
