"""An arm is a model and a retrieval setting: what would be deployed, and what it is compared with.

Evaluation scores four arms on the same samples (base, base + retrieval, candidate, candidate +
retrieval) and the champion at the arm it was deployed with. Metric tables, metrics.json, MLflow and
KFP key them by ``Arm.key`` (``candidate_retrieval``), which is also a valid MLflow metric prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from repotune.errors import RepotuneError

MODELS = ("base", "candidate", "champion")
RETRIEVAL_SUFFIX = "_retrieval"


@dataclass(frozen=True, order=True)
class Arm:
    """A model, with or without retrieved context in front of its prompts."""

    model: str
    """``base`` (the model the candidate was tuned from), ``candidate`` or ``champion``."""
    retrieval: bool = False
    """Whether prompts carry the context retrieved from the repository's index."""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RepotuneError(f"arm model must be one of {', '.join(MODELS)}, got {self.model!r}")

    @property
    def key(self) -> str:
        """``candidate`` or ``candidate_retrieval``: the arm's name in metrics.json, MLflow and KFP."""
        return self.model + (RETRIEVAL_SUFFIX if self.retrieval else "")

    @property
    def label(self) -> str:
        """``candidate + retrieval``: the arm's name for people."""
        return self.model + (" + retrieval" if self.retrieval else "")

    @property
    def without_retrieval(self) -> Arm:
        """The same model alone: where its model-level metrics (perplexity, forgetting) are kept."""
        return Arm(self.model, False)

    @classmethod
    def from_key(cls, key: str) -> Arm:
        if key.endswith(RETRIEVAL_SUFFIX):
            return cls(key[: -len(RETRIEVAL_SUFFIX)], True)
        return cls(key, False)


FOUR_ARMS = (Arm("base"), Arm("base", True), Arm("candidate"), Arm("candidate", True))
"""The arms every evaluation scores (the retrieval ones where there is an index)."""
