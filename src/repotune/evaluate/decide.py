"""The promotion decision: is the candidate measurably better than what is deployed, and safe?

``should_promote`` is a pure function of summarized metrics and a ``Policy``. The reference is the
champion (the deployed model) when there is one, else the base model. Every check that fails is
reported as a sentence, so a refusal says all that is wrong, not only the first thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from repotune.errors import RepotuneError
from repotune.evaluate.metrics import MIN_SAMPLES_FOR_CI, Metric, format_value

FORGETTING_METRIC = "forgetting_perplexity"
"""Perplexity on general code outside the project: how much the candidate forgot of what the base knew."""


@dataclass(frozen=True)
class Policy:
    """What the candidate must show before it replaces the champion (or the base, when none exists)."""

    primary: str = "perplexity"
    """The project-data metric that must improve."""
    min_relative_gain: float = 0.01
    """Relative margin by which the candidate must beat the reference on the primary metric
    (0.01 = 1%; a perplexity of 8.6 must drop to 8.514 or below). Ties never promote."""
    require_significance: bool = True
    """Promote only on a significant gain: the 95% paired-bootstrap interval of the change on the
    primary metric (or, without paired scores, the two models' own intervals) must show a gain."""
    max_forgetting_regression: float | None = 0.05
    """How much `forgetting_perplexity` may worsen relative to the base (0.05 = 5%). The metric must
    then be measured for both; None skips the check."""
    guard_metrics: tuple[str, ...] = ()
    """Metrics that must not regress relative to the reference by more than `max_guard_regression`."""
    max_guard_regression: float = 0.02
    """How much each guard metric may worsen relative to the reference (0.02 = 2%)."""

    def __post_init__(self) -> None:
        if not self.primary:
            raise RepotuneError("policy.primary must name a metric")
        if not (math.isfinite(self.min_relative_gain) and self.min_relative_gain >= 0):
            raise RepotuneError("policy.min_relative_gain must be a number of at least 0")
        if self.max_forgetting_regression is not None and not (
            math.isfinite(self.max_forgetting_regression) and self.max_forgetting_regression >= 0
        ):
            raise RepotuneError("policy.max_forgetting_regression must be at least 0, or None to skip")
        if not (math.isfinite(self.max_guard_regression) and self.max_guard_regression >= 0):
            raise RepotuneError("policy.max_guard_regression must be a number of at least 0")
        # A bare string would iterate as one guard per character.
        if not isinstance(self.guard_metrics, tuple) or not all(
            isinstance(name, str) and name for name in self.guard_metrics
        ):
            raise RepotuneError("policy.guard_metrics must be a tuple of metric names")
        if len(set(self.guard_metrics)) != len(self.guard_metrics):
            raise RepotuneError("policy.guard_metrics names a metric twice")


@dataclass(frozen=True)
class Decision:
    """The verdict and why: the first reason states it, the others give every finding behind it."""

    promote: bool
    reasons: tuple[str, ...]


def should_promote(
    candidate: Mapping[str, Metric],
    base: Mapping[str, Metric],
    champion: Mapping[str, Metric] | None,
    policy: Policy = Policy(),
    paired: Mapping[str, tuple[float, float]] | None = None,
) -> Decision:
    """Promote only on a real, large enough gain on the primary metric without forgetting or regressions.

    ``paired`` maps "base"/"champion" to a paired-bootstrap confidence interval of the candidate's
    relative change on the primary metric against that model (both scored on the same examples, e.g.
    (-0.38, -0.24): 38% to 24% lower). Where given, it decides significance; it is the sharper test,
    since per-example difficulty cancels out. Otherwise the two models' own intervals must not overlap.
    """
    ref_label, reference = ("champion", champion) if champion is not None else ("base", base)
    paired_ci = (paired or {}).get(ref_label)
    blockers: list[str] = []
    findings: list[str] = []

    primary_ok, headline = _check_primary(candidate, reference, ref_label, policy, paired_ci)
    if not primary_ok:
        blockers.append(headline)

    checks = [
        (name, reference, ref_label, policy.max_guard_regression, "guard metric")
        for name in policy.guard_metrics
    ]
    if policy.max_forgetting_regression is not None:
        # Forgetting is measured against the base: the champion may itself have forgotten some.
        checks.insert(
            0, (FORGETTING_METRIC, base, "base", policy.max_forgetting_regression, "general-code perplexity")
        )
    for name, against, label, limit, what in checks:
        ok, sentence = _check_regression(name, candidate, against, label, limit, what)
        if ok:
            findings.append(sentence)
        else:
            blockers.append(sentence)

    if blockers:
        return Decision(False, (f"do not promote: {blockers[0]}", *blockers[1:], *findings))
    return Decision(True, (f"promote: {headline}", *findings))


def _check_primary(
    candidate: Mapping[str, Metric],
    reference: Mapping[str, Metric],
    ref_label: str,
    policy: Policy,
    paired_ci: tuple[float, float] | None = None,
) -> tuple[bool, str]:
    """Whether the primary metric allows promotion, and the sentence that says why."""
    name = policy.primary
    cand = candidate.get(name)
    ref = reference.get(name)
    if cand is None:
        known = ", ".join(sorted(candidate)) or "none"
        return False, f"the candidate has no {name!r} metric, the policy's primary metric (it has {known})"
    if ref is None:
        return False, f"the {ref_label} has no {name!r} metric to compare the candidate against"
    _same_direction(cand, ref)
    if cand.n < MIN_SAMPLES_FOR_CI:
        return False, (
            f"eval set too small (n={cand.n} < {MIN_SAMPLES_FOR_CI}) for a confidence interval; "
            "not promoting on noise"
        )
    if not cand.reliable:
        return (
            False,
            f"the candidate's {name} has no confidence interval (n={cand.n}); not promoting on noise",
        )
    if cand.n != ref.n:
        # Scores from different eval sets are not comparable; the champion must be re-scored here.
        return False, (
            f"candidate and {ref_label} were scored on different eval sets (n={cand.n} vs n={ref.n}); "
            f"re-score the {ref_label} on this eval set"
        )

    comparison = f"{name} {format_value(cand.value)} vs {ref_label} {format_value(ref.value)}"
    comparison += f" ({_signed_change(cand.value, ref.value)})"
    gain = _gain(cand, ref)
    if gain == 0:
        return False, f"tie: {comparison}; ties do not promote"
    if gain < 0:
        return False, f"{comparison}: the {ref_label} is better"
    if gain < policy.min_relative_gain:
        return False, f"{comparison}: below the {policy.min_relative_gain:.1%} margin"

    if paired_ci is not None:
        low, high = paired_ci
        interval = f"paired 95% CI of the change {low:+.1%} to {high:+.1%}"
        improving = low > 0 if cand.higher_is_better else high < 0
        if improving:
            return True, f"{comparison}, {interval}: significant"
        if policy.require_significance:
            return False, f"{comparison}, but the {interval} includes no gain: not significant"
        return True, f"{comparison}, {interval} (significance not required by the policy)"
    if _ci_separated(cand, ref):
        return True, f"{comparison}, CI separated"
    if policy.require_significance:
        intervals = _intervals(cand, ref, ref_label)
        return False, f"{comparison}, but the confidence intervals overlap ({intervals}): not significant"
    return True, f"{comparison}, CIs overlap (significance not required by the policy)"


def _check_regression(
    name: str,
    candidate: Mapping[str, Metric],
    reference: Mapping[str, Metric],
    ref_label: str,
    limit: float,
    what: str,
) -> tuple[bool, str]:
    """Whether `name` stayed within `limit` relative worsening, and a sentence that says so."""
    cand = candidate.get(name)
    ref = reference.get(name)
    if cand is None or ref is None:
        missing = "the candidate" if cand is None else f"the {ref_label}"
        return False, f"{name} ({what}) was not measured for {missing}"
    _same_direction(cand, ref)
    comparison = f"{name} {format_value(cand.value)} vs {ref_label} {format_value(ref.value)}"
    comparison += f" ({_signed_change(cand.value, ref.value)})"
    if -_gain(cand, ref) > limit:
        return False, f"{comparison}: {what} worsened beyond the {limit:.1%} limit"
    return True, f"{comparison}: {what} within the {limit:.1%} limit"


def _same_direction(cand: Metric, ref: Metric) -> None:
    if cand.higher_is_better != ref.higher_is_better:
        raise RepotuneError(f"metric {cand.name} disagrees between models on whether higher is better")


def _gain(cand: Metric, ref: Metric) -> float:
    """Relative improvement of the candidate over the reference; negative when it is worse."""
    better = cand.value - ref.value if cand.higher_is_better else ref.value - cand.value
    if better == 0:
        return 0.0
    if ref.value == 0:
        # Any change from zero (an exact match rate of 0) is an unbounded relative change.
        return math.copysign(math.inf, better)
    return better / abs(ref.value)


def _signed_change(value: float, ref_value: float) -> str:
    if ref_value == 0:
        return "from 0" if value != 0 else "+0.0%"
    return f"{(value - ref_value) / abs(ref_value):+.1%}"


def _ci_separated(cand: Metric, ref: Metric) -> bool:
    if cand.ci_low is None or cand.ci_high is None or ref.ci_low is None or ref.ci_high is None:
        return False
    return cand.ci_low > ref.ci_high if cand.higher_is_better else cand.ci_high < ref.ci_low


def _intervals(cand: Metric, ref: Metric, ref_label: str) -> str:
    def interval(metric: Metric) -> str:
        if metric.ci_low is None or metric.ci_high is None:
            return f"none, n={metric.n}"
        return f"{format_value(metric.ci_low)}-{format_value(metric.ci_high)}"

    return f"candidate {interval(cand)}, {ref_label} {interval(ref)}"
