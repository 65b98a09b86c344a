from __future__ import annotations

import pytest

from repotune.errors import RepotuneError
from repotune.evaluate.decide import FORGETTING_METRIC, Decision, Policy, should_promote
from repotune.evaluate.metrics import Metric


def ppl(
    value: float, ci: tuple[float, float] | None = None, n: int = 100, name: str = "perplexity"
) -> Metric:
    """A lower-is-better metric; the default interval is a tight +-1% around the value."""
    low, high = ci if ci is not None else (value * 0.99, value * 1.01)
    return Metric(name, value, n=n, ci_low=low, ci_high=high, higher_is_better=False)


def em(value: float, ci: tuple[float, float] | None = None, n: int = 100) -> Metric:
    low, high = ci if ci is not None else (value - 0.01, value + 0.01)
    return Metric("exact_match", value, n=n, ci_low=low, ci_high=high, higher_is_better=True)


def models(perplexity: Metric, forgetting: float = 12.0, **others: Metric) -> dict[str, Metric]:
    return {"perplexity": perplexity, FORGETTING_METRIC: ppl(forgetting, name=FORGETTING_METRIC), **others}


BASE = models(ppl(10.0), forgetting=12.0)
CHAMPION = models(ppl(8.60, ci=(8.40, 8.80)), forgetting=12.2)


def test_without_champion_the_candidate_is_compared_with_the_base() -> None:
    decision = should_promote(models(ppl(9.0)), BASE, None)
    assert decision == Decision(
        True,
        (
            "promote: perplexity 9.00 vs base 10.00 (-10.0%), CI separated",
            "forgetting_perplexity 12.00 vs base 12.00 (+0.0%): "
            "general-code perplexity within the 5.0% limit",
        ),
    )


def test_candidate_better_than_champion_promotes() -> None:
    decision = should_promote(models(ppl(8.12, ci=(7.90, 8.30))), BASE, CHAMPION)
    assert decision.promote
    assert decision.reasons[0] == "promote: perplexity 8.12 vs champion 8.60 (-5.6%), CI separated"


def test_champion_better_than_candidate_does_not_promote_even_when_base_is_beaten() -> None:
    decision = should_promote(models(ppl(9.0)), BASE, CHAMPION)
    assert not decision.promote
    assert (
        decision.reasons[0]
        == "do not promote: perplexity 9.00 vs champion 8.60 (+4.7%): the champion is better"
    )


def test_tie_does_not_promote_even_without_margin_or_significance() -> None:
    policy = Policy(min_relative_gain=0.0, require_significance=False)
    decision = should_promote(models(ppl(8.60)), BASE, CHAMPION, policy)
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: tie: perplexity 8.60 vs champion 8.60 (+0.0%); ties do not promote"
    )


def test_gain_below_margin_does_not_promote() -> None:
    decision = should_promote(models(ppl(8.55, ci=(8.0, 8.3))), BASE, CHAMPION)
    assert not decision.promote
    assert decision.reasons[0].endswith("(-0.6%): below the 1.0% margin")


def test_gain_exactly_at_margin_promotes() -> None:
    reference = models(ppl(100.0, ci=(99.5, 100.5)))
    candidate = models(ppl(99.0, ci=(98.5, 99.4)))
    assert should_promote(candidate, reference, None).promote


def test_ci_overlap_blocks_when_significance_is_required() -> None:
    candidate = models(ppl(8.12, ci=(7.80, 8.50)))
    decision = should_promote(candidate, BASE, CHAMPION, Policy(require_significance=True))
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: perplexity 8.12 vs champion 8.60 (-5.6%), but the confidence intervals overlap "
        "(candidate 7.80-8.50, champion 8.40-8.80): not significant"
    )


def test_ci_overlap_promotes_when_significance_is_not_required() -> None:
    candidate = models(ppl(8.12, ci=(7.80, 8.50)))
    decision = should_promote(candidate, BASE, CHAMPION, Policy(require_significance=False))
    assert decision.promote
    assert decision.reasons[0] == (
        "promote: perplexity 8.12 vs champion 8.60 (-5.6%), "
        "CIs overlap (significance not required by the policy)"
    )


def test_better_primary_but_worse_guard_metric_does_not_promote() -> None:
    champion = models(ppl(8.60, ci=(8.40, 8.80)), forgetting=12.2, exact_match=em(0.45))
    candidate = models(ppl(8.00, ci=(7.80, 8.20)), exact_match=em(0.40))
    decision = should_promote(candidate, BASE, champion, Policy(guard_metrics=("exact_match",)))
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: exact_match 0.400 vs champion 0.450 (-11.1%): "
        "guard metric worsened beyond the 2.0% limit"
    )


def test_guard_metric_within_limit_promotes_and_is_reported() -> None:
    champion = models(ppl(8.60, ci=(8.40, 8.80)), exact_match=em(0.45))
    candidate = models(ppl(8.00, ci=(7.80, 8.20)), exact_match=em(0.445))
    decision = should_promote(candidate, BASE, champion, Policy(guard_metrics=("exact_match",)))
    assert decision.promote
    assert (
        "exact_match 0.445 vs champion 0.450 (-1.1%): guard metric within the 2.0% limit" in decision.reasons
    )


def test_missing_guard_metric_does_not_promote() -> None:
    decision = should_promote(
        models(ppl(8.0, ci=(7.8, 8.2))), BASE, CHAMPION, Policy(guard_metrics=("exact_match",))
    )
    assert not decision.promote
    assert (
        decision.reasons[0] == "do not promote: exact_match (guard metric) was not measured for the candidate"
    )


def test_forgetting_regression_beyond_limit_does_not_promote() -> None:
    candidate = models(ppl(8.0, ci=(7.8, 8.2)), forgetting=12.9)
    decision = should_promote(candidate, BASE, CHAMPION)
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: forgetting_perplexity 12.90 vs base 12.00 (+7.5%): "
        "general-code perplexity worsened beyond the 5.0% limit"
    )


def test_forgetting_is_measured_against_the_base_not_the_champion() -> None:
    # within 5% of the base (12.0 * 1.05 = 12.6) though worse than a champion that forgot less
    champion = models(ppl(8.60, ci=(8.40, 8.80)), forgetting=11.0)
    decision = should_promote(models(ppl(8.0, ci=(7.8, 8.2)), forgetting=12.5), BASE, champion)
    assert decision.promote
    assert any(reason.startswith("forgetting_perplexity 12.50 vs base 12.00") for reason in decision.reasons)


def test_forgetting_not_measured_blocks_unless_the_check_is_off() -> None:
    candidate = {"perplexity": ppl(8.0, ci=(7.8, 8.2))}
    base = {"perplexity": ppl(10.0)}
    blocked = should_promote(candidate, base, None)
    assert blocked.reasons == (
        "do not promote: forgetting_perplexity (general-code perplexity) was not measured for the candidate",
    )
    assert should_promote(candidate, base, None, Policy(max_forgetting_regression=None)).promote


def test_too_small_eval_set_does_not_promote() -> None:
    candidate = models(Metric("perplexity", 5.0, n=7, ci_low=None, ci_high=None, higher_is_better=False))
    base = models(Metric("perplexity", 10.0, n=7, ci_low=None, ci_high=None, higher_is_better=False))
    decision = should_promote(candidate, base, None, Policy(require_significance=False))
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: eval set too small (n=7 < 20) for a confidence interval; not promoting on noise"
    )


def test_missing_primary_metric_gives_a_clear_reason() -> None:
    candidate = {"exact_match": em(0.5), FORGETTING_METRIC: ppl(12.0, name=FORGETTING_METRIC)}
    decision = should_promote(candidate, BASE, None)
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: the candidate has no 'perplexity' metric, the policy's primary metric "
        "(it has exact_match, forgetting_perplexity)"
    )


def test_reference_without_primary_metric_does_not_promote() -> None:
    decision = should_promote(models(ppl(8.0)), BASE, {"exact_match": em(0.4)})
    assert not decision.promote
    assert (
        decision.reasons[0]
        == "do not promote: the champion has no 'perplexity' metric to compare the candidate against"
    )


def test_scores_from_different_eval_sets_do_not_promote() -> None:
    champion = models(ppl(8.60, ci=(8.40, 8.80), n=80))
    decision = should_promote(models(ppl(8.0, ci=(7.8, 8.2))), BASE, champion)
    assert not decision.promote
    assert "different eval sets (n=100 vs n=80)" in decision.reasons[0]


def test_higher_is_better_primary_metric() -> None:
    policy = Policy(primary="exact_match")
    base = models(ppl(10.0), exact_match=em(0.30, ci=(0.25, 0.35)))
    better = models(ppl(9.0), exact_match=em(0.45, ci=(0.40, 0.50)))
    worse = models(ppl(9.0), exact_match=em(0.20, ci=(0.15, 0.25)))
    decision = should_promote(better, base, None, policy)
    assert decision.promote
    assert decision.reasons[0] == "promote: exact_match 0.450 vs base 0.300 (+50.0%), CI separated"
    assert should_promote(worse, base, None, policy).reasons[0].endswith("the base is better")


def test_every_blocker_is_reported_after_the_verdict() -> None:
    champion = models(ppl(8.60, ci=(8.40, 8.80)), exact_match=em(0.45))
    candidate = models(ppl(9.0), forgetting=14.0, exact_match=em(0.30))
    decision = should_promote(candidate, BASE, champion, Policy(guard_metrics=("exact_match",)))
    assert not decision.promote
    assert len(decision.reasons) == 3
    assert decision.reasons[0].startswith("do not promote: perplexity 9.00 vs champion 8.60")
    assert decision.reasons[1].startswith("forgetting_perplexity 14.00 vs base 12.00 (+16.7%)")
    assert decision.reasons[2].startswith("exact_match 0.300 vs champion 0.450 (-33.3%)")


def test_metrics_that_disagree_on_direction_are_an_error() -> None:
    flipped = Metric("perplexity", 8.0, n=100, ci_low=7.9, ci_high=8.1, higher_is_better=True)
    with pytest.raises(RepotuneError, match="higher is better"):
        should_promote(models(flipped), BASE, None)


@pytest.mark.parametrize(
    "settings",
    [
        {"primary": ""},
        {"min_relative_gain": -0.01},
        {"min_relative_gain": float("nan")},
        {"max_forgetting_regression": -0.1},
        {"max_guard_regression": -1.0},
        {"guard_metrics": "exact_match"},
        {"guard_metrics": ("exact_match", "exact_match")},
        {"guard_metrics": ("",)},
    ],
)
def test_policy_rejects_invalid_settings(settings: dict[str, object]) -> None:
    with pytest.raises(RepotuneError, match="policy"):
        Policy(**settings)  # type: ignore[arg-type]


def test_a_paired_interval_decides_significance_where_the_own_intervals_overlap() -> None:
    overlapping = models(ppl(14.9, ci=(12.4, 17.9)))
    wide_base = models(ppl(21.6, ci=(17.4, 26.5)))
    assert not should_promote(overlapping, wide_base, None).promote
    decision = should_promote(overlapping, wide_base, None, paired={"base": (-0.36, -0.26)})
    assert decision.promote
    assert decision.reasons[0] == (
        "promote: perplexity 14.90 vs base 21.60 (-31.0%), "
        "paired 95% CI of the change -36.0% to -26.0%: significant"
    )


def test_a_paired_interval_that_includes_no_change_blocks_promotion() -> None:
    decision = should_promote(models(ppl(9.0)), BASE, None, paired={"base": (-0.2, 0.01)})
    assert not decision.promote
    assert "includes no gain: not significant" in decision.reasons[0]
    lenient = Policy(require_significance=False)
    assert should_promote(models(ppl(9.0)), BASE, None, lenient, paired={"base": (-0.2, 0.01)}).promote


def test_the_paired_interval_against_the_champion_is_the_one_used() -> None:
    candidate = models(ppl(8.12, ci=(7.0, 9.0)))
    # Significant against the base, not against the champion: the champion's interval counts.
    paired = {"base": (-0.3, -0.1), "champion": (-0.1, 0.02)}
    assert not should_promote(candidate, BASE, CHAMPION, paired=paired).promote
