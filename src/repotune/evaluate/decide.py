"""The promotion decision: which candidate arm, if any, is measurably better than what the team has?

``should_promote`` is a pure function of the arms' summarized metrics, their per-sample scores and a
``Policy``. The arms it may choose are the candidate with and without retrieval; the reference is the
champion at the arm it was deployed with, or, without a champion, the better of the base model with
retrieval and without on the primary metric (what a team has without fine-tuning), or the base
model alone where no retrieval arm was scored. An arm
must beat the reference on the primary completion metric, significantly by a paired bootstrap over
the same samples, and by a margin; it must not lose significantly on the other completion metrics;
and perplexity, forgetting and the training-format check guard it. Of the arms that pass, the best on
the primary metric is chosen. Every check is reported as a sentence, so a refusal says all that is
wrong, not only the first thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from repotune.errors import RepotuneError
from repotune.evaluate.arms import Arm
from repotune.evaluate.metrics import MIN_SAMPLES_FOR_CI, Metric, format_value, paired_difference_ci

FORGETTING_METRIC = "forgetting_perplexity"
"""Perplexity on general code outside the project: how much the candidate forgot of what the base knew."""
PERPLEXITY_METRIC = "perplexity"
"""Perplexity of the held-out (file split) or added (temporal split) code."""
MARKER_METRIC = "line_diff_marker_share"
"""Share of line completions that start like a diff's line or header, or a file header
(``starts_like_training_format``)."""
REPEAT_METRIC = "line_repeats_line_above_share"
"""The share of line completions that write the line above again (``rewrites_line_above``): reported,
not decided on; an editor that drops them shows nothing, and one that does not shows a copy."""
CANDIDATE_ARMS = (Arm("candidate", False), Arm("candidate", True))


@dataclass(frozen=True)
class Policy:
    """What a candidate arm must show before it replaces the champion (or base + retrieval)."""

    primary: str = "line_edit_similarity"
    """The completion metric an arm must improve on the reference to be promoted; of the arms that
    qualify, the best on it is chosen. Any metric name works (`perplexity` for the old rule)."""
    secondary: tuple[str, ...] = ("line_exact_match", "fim_edit_similarity", "fim_exact_match")
    """Completion metrics on which the chosen arm must not be significantly worse than the reference;
    each is checked where both have it (FIM: only models with FIM tokens have it)."""
    min_relative_gain: float = 0.01
    """Relative margin by which the arm must beat the reference on the primary metric (0.01 = 1%: an
    edit similarity of 0.300 must reach 0.303). Ties never promote."""
    require_significance: bool = True
    """Promote only on a significant gain: the 95% paired-bootstrap interval of the difference on the
    primary metric over the same samples (or, without per-sample scores, the two arms' own intervals)
    must lie wholly on the side of a gain."""
    allow_retrieval: bool = True
    """Whether the candidate may be deployed with retrieval (serving then needs the index); False
    chooses between nothing and the candidate alone."""
    max_perplexity_regression: float | None = 0.05
    """How much the candidate's perplexity of held-out (or added) code may worsen relative to the
    reference's model (0.05 = 5%); None skips the check."""
    max_forgetting_regression: float | None = 0.05
    """How much `forgetting_perplexity` may worsen relative to the base (0.05 = 5%). The metric must
    then be measured for both; None skips the check."""
    max_marker_share_increase: float | None = 0.0
    """How much more often than the base model (at the same retrieval setting) the arm's line
    completions may start like a diff line or a file header, as a share of completions (0.0: never more
    often than base; 0.05: five more in a hundred); None skips the check."""
    guard_metrics: tuple[str, ...] = ()
    """More metrics that must not regress relative to the reference by more than `max_guard_regression`."""
    max_guard_regression: float = 0.02
    """How much each guard metric may worsen relative to the reference (0.02 = 2%)."""

    def __post_init__(self) -> None:
        if not self.primary:
            raise RepotuneError("policy.primary must name a metric")
        if not (math.isfinite(self.min_relative_gain) and self.min_relative_gain >= 0):
            raise RepotuneError("policy.min_relative_gain must be a number of at least 0")
        for name in ("max_perplexity_regression", "max_forgetting_regression", "max_marker_share_increase"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise RepotuneError(f"policy.{name} must be at least 0, or None to skip")
        if not (math.isfinite(self.max_guard_regression) and self.max_guard_regression >= 0):
            raise RepotuneError("policy.max_guard_regression must be a number of at least 0")
        for name in ("secondary", "guard_metrics"):
            names = getattr(self, name)
            # A bare string would iterate as one metric per character.
            if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
                raise RepotuneError(f"policy.{name} must be a tuple of metric names")
            if len(set(names)) != len(names):
                raise RepotuneError(f"policy.{name} names a metric twice")


@dataclass(frozen=True)
class Decision:
    """The verdict and why: the first reason states it, the others give every finding behind it."""

    promote: bool
    reasons: tuple[str, ...]
    arm: Arm | None = None
    """The candidate arm chosen (promoted), or the best one found (not promoted); None when no
    candidate arm was scored. ``arm.retrieval`` says whether serving must retrieve."""
    reference: Arm | None = None
    """What the arms were compared with: the champion's arm, base + retrieval, or base."""
    fim: bool | None = None
    """How ``arm`` fills a gap (a request with a ``suffix``) best: True, with FIM prompts (the suffix
    in view); False, from the code before the cursor alone (``fills_with_fim``). None: not measured."""

    def as_dict(self) -> dict[str, Any]:
        """The decision as metrics.json and the run's status keep it: arms by their keys,
        ``retrieval``, whether the arm is served with retrieval, and ``fim`` (``Decision.fim``)."""
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "arm": self.arm.key if self.arm else None,
            "retrieval": self.arm.retrieval if self.arm else None,
            "reference": self.reference.key if self.reference else None,
            "fim": self.fim,
        }


PREFIX_ONLY = "fim_prefix_only"
"""The FIM samples' task answered from the prefix alone (no suffix, no FIM tokens)."""


def fim_scores(metrics: Mapping[str, Metric]) -> tuple[Metric | None, Metric | None]:
    """An arm's edit similarity over the FIM spans filled with FIM prompts, and from the prefix alone;
    None for a way it was not scored."""
    return metrics.get("fim_edit_similarity"), metrics.get(f"{PREFIX_ONLY}_edit_similarity")


def fim_way(metrics: Mapping[str, Metric]) -> bool | None:
    """Whether FIM prompts filled the FIM spans at least as well as the prefix alone did (edit
    similarity over the same spans); False when only the prefix alone was scored (no FIM tokens), None
    when neither was."""
    with_fim, alone = fim_scores(metrics)
    if with_fim is None:
        return False if alone is not None else None
    return alone is None or with_fim.value >= alone.value


def fills_with_fim(scores: Mapping[str, Mapping[str, Metric]], arm: Arm) -> bool | None:
    """Whether ``arm``'s model fills the FIM spans at least as well with FIM prompts as from the prefix
    alone (``fim_way``), measured on its arm without retrieval where that arm was scored (it fills them
    both ways), else on ``arm`` itself; False when only the prefix alone was scored (a model without
    FIM tokens), None when neither was.

    A model that learned FIM in too few steps can do worse with the suffix in view than without it
    (SmolLM2-135M after the CPU recipe: 0.146 against 0.335 on itsdangerous); serving then answers
    requests with a suffix from the prefix alone (``repotune serve --fim off``)."""
    return fim_way(scores.get(fim_holder(scores, arm).key, {}))


def fim_holder(scores: Mapping[str, Any], arm: Arm) -> Arm:
    """The arm whose FIM scores decide how ``arm``'s model fills gaps: its arm without retrieval where
    that was scored (it fills the spans both ways), else ``arm`` itself."""
    return arm.without_retrieval if arm.without_retrieval.key in scores else arm


@dataclass
class _Verdict:
    arm: Arm
    headline: str = ""
    blockers: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def reference_arm(
    arms: Sequence[Arm], scores: Mapping[str, Mapping[str, Metric]] | None = None, primary: str = ""
) -> Arm | None:
    """The champion's arm if a champion was scored; else the better base arm on ``primary`` (what a
    team has without fine-tuning is the base model served either way: with the index where retrieval
    helps it, without where the retrieved context only distracts it), base + retrieval on a tie or
    without scores; else base."""
    for arm in sorted(arms):
        if arm.model == "champion":
            return arm
    with_index, alone = Arm("base", True), Arm("base", False)
    if with_index in arms and alone in arms and scores is not None:
        indexed, plain = _metric(scores, with_index, primary), _metric(scores, alone, primary)
        if indexed is not None and plain is not None and _rank(plain) > _rank(indexed):
            return alone
    for arm in (with_index, alone):
        if arm in arms:
            return arm
    return None


def paired_change(
    per_sample: Mapping[str, Mapping[str, Sequence[float]]] | None, arm: Arm, reference: Arm, name: str
) -> tuple[float, float] | None:
    """The paired-bootstrap 95% interval of mean(arm) - mean(reference) on ``name``, where both arms
    have per-sample scores of the same samples; else None."""
    if per_sample is None:
        return None
    mine = per_sample.get(arm.key, {}).get(name)
    theirs = per_sample.get(reference.key, {}).get(name)
    if not mine or not theirs or len(mine) != len(theirs) or len(mine) < MIN_SAMPLES_FOR_CI:
        return None
    return paired_difference_ci(mine, theirs)


def should_promote(
    scores: Mapping[str, Mapping[str, Metric]],
    policy: Policy = Policy(),
    per_sample: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> Decision:
    """Promote the best candidate arm that beats the reference, significantly, without regressions.

    ``scores`` maps arm keys (``Arm.key``: ``base``, ``base_retrieval``, ``candidate``,
    ``candidate_retrieval``, ``champion`` or ``champion_retrieval``) to their metrics; an arm's
    model-level metrics (perplexity, forgetting) may sit with the same model's arm without retrieval.
    ``per_sample`` maps arm keys to per-sample scores of completion metrics, in the same sample order
    for every arm; where given, significance is a paired bootstrap over the samples, the sharper test,
    since each sample's difficulty cancels out. Otherwise the two arms' own intervals must not overlap.
    """
    arms = {Arm.from_key(key) for key in scores}
    reference = reference_arm(list(arms), scores, policy.primary)
    candidates = [a for a in CANDIDATE_ARMS if a in arms and (policy.allow_retrieval or not a.retrieval)]
    if reference is None or not candidates:
        missing = (
            "no candidate arm was scored" if not candidates else "no base or champion arm to compare with"
        )
        return Decision(False, (f"do not promote: {missing}",), None, reference)
    decision = _decide(scores, policy, per_sample, reference, candidates)
    return replace(decision, fim=fills_with_fim(scores, decision.arm) if decision.arm else None)


def _decide(
    scores: Mapping[str, Mapping[str, Metric]],
    policy: Policy,
    per_sample: Mapping[str, Mapping[str, Sequence[float]]] | None,
    reference: Arm,
    candidates: list[Arm],
) -> Decision:
    verdicts = [_judge(arm, reference, scores, policy, per_sample) for arm in candidates]
    ranked = sorted(verdicts, key=lambda v: _rank(_metric(scores, v.arm, policy.primary)), reverse=True)
    for verdict in ranked:
        if not verdict.blockers:
            others = [f"also scored: {_summary(v)}" for v in ranked if v is not verdict]
            headline = f"promote {verdict.arm.label}: {verdict.headline}"
            return Decision(True, (headline, *verdict.findings, *others), verdict.arm, reference)
    best = ranked[0]
    others = [f"also scored: {_summary(v)}" for v in ranked[1:]]
    reasons = (
        f"do not promote: {best.arm.label}: {best.blockers[0]}",
        *_retrieval_alone_wins(reference, scores, policy.primary),
        *best.blockers[1:],
        *best.findings,
        *others,
    )
    return Decision(False, reasons, best.arm, reference)


def _retrieval_alone_wins(reference: Arm, scores: Mapping[str, Mapping[str, Metric]], name: str) -> list[str]:
    """The sentence that says what to serve when a base arm (the reference without a champion)
    outscored every other arm on the primary metric: the base model, with the index where that arm
    had it, no fine-tuning. Nothing otherwise: a champion is already served."""
    if reference.model != "base":
        return []
    ref = _metric(scores, reference, name)
    others = [_metric(scores, Arm.from_key(key), name) for key in scores if key != reference.key]
    if ref is None or not all(m is not None and _gain(m, ref) < 0 for m in others):
        return []
    if not reference.retrieval:
        return [
            f"the base model alone scored best of all arms on {name}: neither fine-tuning nor the "
            "retrieved context helped here, so keep serving the base model as it is"
        ]
    return [
        f"the base + retrieval scored best of all arms on {name}: retrieval without fine-tuning is what "
        "to serve until a candidate beats it (`repotune index` writes the index into a base model "
        "folder; `repotune serve` that folder with `--retrieval on`)"
    ]


def _summary(verdict: _Verdict) -> str:
    if verdict.blockers:
        return f"{verdict.arm.label}: {verdict.blockers[0]}"
    return f"{verdict.arm.label}: {verdict.headline} (passes, but ranks lower on the primary metric)"


def _rank(metric: Metric | None) -> float:
    if metric is None:
        return -math.inf
    return metric.value if metric.higher_is_better else -metric.value


def _metric(scores: Mapping[str, Mapping[str, Metric]], arm: Arm, name: str) -> Metric | None:
    """``name`` of ``arm``, or of its model without retrieval (model-level metrics live there)."""
    return scores.get(_holder(scores, arm, name).key, {}).get(name)


def _holder(scores: Mapping[str, Mapping[str, Metric]], arm: Arm, name: str) -> Arm:
    """The arm whose ``name`` stands for ``arm``'s: itself, or its model without retrieval."""
    return arm if name in scores.get(arm.key, {}) else arm.without_retrieval


def _judge(
    arm: Arm,
    reference: Arm,
    scores: Mapping[str, Mapping[str, Metric]],
    policy: Policy,
    per_sample: Mapping[str, Mapping[str, Sequence[float]]] | None,
) -> _Verdict:
    verdict = _Verdict(arm)
    ok, verdict.headline = _check_primary(arm, reference, scores, policy, per_sample)
    if not ok:
        verdict.blockers.append(verdict.headline)
    for name in policy.secondary:
        if name == policy.primary:
            continue
        cand, ref = _metric(scores, arm, name), _metric(scores, reference, name)
        if cand is None or ref is None:
            continue  # FIM only where both models have FIM tokens; nothing to compare otherwise
        ok, sentence = _check_no_loss(
            name, cand, ref, reference.label, paired_change(per_sample, arm, reference, name)
        )
        (verdict.findings if ok else verdict.blockers).append(sentence)
    checks: list[tuple[str, Arm, float, str, bool]] = []
    if policy.max_perplexity_regression is not None and policy.primary != PERPLEXITY_METRIC:
        checks.append((PERPLEXITY_METRIC, reference, policy.max_perplexity_regression, "perplexity", False))
    if policy.max_forgetting_regression is not None:
        # Forgetting is measured against the base: the champion may itself have forgotten some.
        checks.append(
            (
                FORGETTING_METRIC,
                Arm("base"),
                policy.max_forgetting_regression,
                "general-code perplexity",
                False,
            )
        )
    # Retrieved context is itself made of file headers: compare with base at the same setting.
    base = Arm("base", arm.retrieval) if Arm("base", arm.retrieval).key in scores else Arm("base")
    measured = _metric(scores, arm, MARKER_METRIC) or _metric(scores, base, MARKER_METRIC)
    if policy.max_marker_share_increase is not None and measured:  # line completions were scored
        checks.append((MARKER_METRIC, base, policy.max_marker_share_increase, "diff-marker share", True))
    checks += [
        (name, reference, policy.max_guard_regression, "guard metric", False) for name in policy.guard_metrics
    ]
    for name, against, limit, what, absolute in checks:
        ok, sentence = _check_regression(name, arm, against, scores, limit, what, absolute)
        (verdict.findings if ok else verdict.blockers).append(sentence)
    return verdict


def _check_primary(
    arm: Arm,
    reference: Arm,
    scores: Mapping[str, Mapping[str, Metric]],
    policy: Policy,
    per_sample: Mapping[str, Mapping[str, Sequence[float]]] | None,
) -> tuple[bool, str]:
    """Whether the primary metric allows promoting ``arm``, and the sentence that says why."""
    name = policy.primary
    cand, ref = _metric(scores, arm, name), _metric(scores, reference, name)
    if cand is None:
        known = ", ".join(sorted(scores.get(arm.key, {}))) or "none"
        return False, f"the {arm.label} has no {name!r} metric, the policy's primary metric (it has {known})"
    if ref is None:
        return False, f"the {reference.label} has no {name!r} metric to compare with"
    _same_direction(cand, ref)
    if cand.n < MIN_SAMPLES_FOR_CI:
        return False, (
            f"eval set too small (n={cand.n} < {MIN_SAMPLES_FOR_CI}) for a confidence interval; "
            "not promoting on noise (hold out more: an earlier ingest --cut, or clean's --eval-fraction "
            "where there is no history; or ask for more: evaluate's --line-samples, run's --eval "
            "line_samples=N)"
        )
    if not cand.reliable:
        return (
            False,
            f"the {arm.label}'s {name} has no confidence interval (n={cand.n}); not promoting on noise",
        )
    if cand.n != ref.n:
        # Scores from different eval sets are not comparable; the champion must be re-scored here.
        return False, (
            f"{arm.label} and {reference.label} were scored on different eval sets (n={cand.n} vs "
            f"n={ref.n}); score both on this eval set"
        )
    comparison = _comparison(name, cand, ref, reference.label)
    gain = _gain(cand, ref)
    if gain == 0:
        return False, f"tie: {comparison}; ties do not promote"
    if gain < 0:
        return False, f"{comparison}: the {reference.label} is better"
    if gain < policy.min_relative_gain:
        return False, f"{comparison}: below the {policy.min_relative_gain:.1%} margin"
    paired = paired_change(per_sample, arm, reference, name)
    if paired is not None:
        interval = f"paired 95% CI of the difference {_interval(paired)}"
        improving = paired[0] > 0 if cand.higher_is_better else paired[1] < 0
        if improving:
            return True, f"{comparison}, {interval}: significant"
        if policy.require_significance:
            return False, f"{comparison}, but the {interval} includes no gain: not significant"
        return True, f"{comparison}, {interval} (significance not required by the policy)"
    if _ci_separated(cand, ref):
        return True, f"{comparison}, CI separated"
    if policy.require_significance:
        return False, (
            f"{comparison}, but the confidence intervals overlap ({_intervals(cand, ref, arm, reference)}): "
            "not significant"
        )
    return True, f"{comparison}, CIs overlap (significance not required by the policy)"


def _check_no_loss(
    name: str, cand: Metric, ref: Metric, ref_label: str, paired: tuple[float, float] | None
) -> tuple[bool, str]:
    """Whether ``cand`` is not significantly worse than ``ref`` on a secondary completion metric."""
    _same_direction(cand, ref)
    comparison = _comparison(name, cand, ref, ref_label)
    if paired is not None:
        interval = f"paired 95% CI of the difference {_interval(paired)}"
        worse = paired[1] < 0 if cand.higher_is_better else paired[0] > 0
        if worse:
            return False, f"{comparison}, {interval}: significantly worse"
        return True, f"{comparison}, {interval}: no significant loss"
    if _ci_separated(ref, cand):
        return False, f"{comparison}: significantly worse (CI separated)"
    return True, f"{comparison}: no significant loss"


def _check_regression(
    name: str,
    arm: Arm,
    against: Arm,
    scores: Mapping[str, Mapping[str, Metric]],
    limit: float,
    what: str,
    absolute: bool,
) -> tuple[bool, str]:
    """Whether ``name`` of ``arm`` stayed within ``limit`` of ``against``'s (relative, or absolute for a
    share), and a sentence that says so."""
    cand, ref = _metric(scores, arm, name), _metric(scores, against, name)
    if cand is None or ref is None:
        missing = arm.label if cand is None else against.label
        return False, f"{name} ({what}) was not measured for the {missing}"
    _same_direction(cand, ref)
    # A model-level metric (perplexity) of "base + retrieval" is the base model's: say whose it is.
    holder = _holder(scores, against, name).label
    if cand.tokens is not None and ref.tokens is not None and cand.tokens != ref.tokens:
        # Another tokenizer (a champion on another base model) cuts the same code into other tokens
        # and other windows: a perplexity per token of one says nothing about the other's.
        return True, (
            f"{name} {format_value(cand.value)} vs {holder} {format_value(ref.value)}: not compared, the "
            f"two models read the code as different tokens (another tokenizer), so the {what} limit "
            "does not apply"
        )
    comparison = _comparison(name, cand, ref, holder)
    if absolute:
        worse = (ref.value - cand.value) if cand.higher_is_better else (cand.value - ref.value)
        bound = f"{limit:+.3f} limit"
    else:
        worse = -_gain(cand, ref)
        bound = f"{limit:.1%} limit"
    if worse > limit:
        return False, f"{comparison}: {what} worsened beyond the {bound}"
    return True, f"{comparison}: {what} within the {bound}"


def _comparison(name: str, cand: Metric, ref: Metric, ref_label: str) -> str:
    change = _signed_change(cand.value, ref.value)
    return f"{name} {format_value(cand.value)} vs {ref_label} {format_value(ref.value)} ({change})"


def _interval(ci: tuple[float, float]) -> str:
    return f"{ci[0]:+.3f} to {ci[1]:+.3f}"


def _same_direction(cand: Metric, ref: Metric) -> None:
    if cand.higher_is_better != ref.higher_is_better:
        raise RepotuneError(f"metric {cand.name} disagrees between arms on whether higher is better")


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
    """Whether ``cand``'s interval lies wholly on the better side of ``ref``'s."""
    if cand.ci_low is None or cand.ci_high is None or ref.ci_low is None or ref.ci_high is None:
        return False
    return cand.ci_low > ref.ci_high if cand.higher_is_better else cand.ci_high < ref.ci_low


def _intervals(cand: Metric, ref: Metric, arm: Arm, reference: Arm) -> str:
    def interval(metric: Metric) -> str:
        if metric.ci_low is None or metric.ci_high is None:
            return f"none, n={metric.n}"
        return f"{format_value(metric.ci_low)}-{format_value(metric.ci_high)}"

    return f"{arm.label} {interval(cand)}, {reference.label} {interval(ref)}"
