"""The evaluate stage: ``run(EvaluateConfig) -> EvaluateResult``; ``EvaluateLayout`` names its files."""

from repotune.evaluate.arms import Arm
from repotune.evaluate.baseline import run as score_base
from repotune.evaluate.baseline import summary as base_scores_summary
from repotune.evaluate.decide import Policy
from repotune.evaluate.generate import rewrites_line_above
from repotune.evaluate.layout import EvaluateLayout
from repotune.evaluate.registry import Registry, check_same_project
from repotune.evaluate.samples import draw_samples, existing_after, line_spans
from repotune.evaluate.settings import ScoringConfig
from repotune.evaluate.stage import EvaluateConfig, EvaluateResult, run, settings_from

__all__ = [
    "Arm",
    "EvaluateConfig",
    "EvaluateLayout",
    "EvaluateResult",
    "Policy",
    "Registry",
    "ScoringConfig",
    "base_scores_summary",
    "check_same_project",
    "draw_samples",
    "existing_after",
    "line_spans",
    "rewrites_line_above",
    "run",
    "score_base",
    "settings_from",
]
