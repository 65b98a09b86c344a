from __future__ import annotations

import dataclasses
import random

import pytest

from repotune.errors import RepotuneError
from repotune.evaluate.arms import Arm
from repotune.evaluate.decide import FORGETTING_METRIC, Decision, Policy, should_promote
from repotune.evaluate.metrics import Metric, summarize

ES, EM, MARKER = "line_edit_similarity", "line_exact_match", "line_diff_marker_share"
# The old rule (perplexity alone), for the checks that do not depend on the metric.
BY_PERPLEXITY = Policy(primary="perplexity", secondary=(), max_marker_share_increase=None)


def ppl(
    value: float, ci: tuple[float, float] | None = None, n: int = 100, name: str = "perplexity"
) -> Metric:
    """A lower-is-better metric; the default interval is a tight +-1% around the value."""
    low, high = ci if ci is not None else (value * 0.99, value * 1.01)
    return Metric(name, value, n=n, ci_low=low, ci_high=high, higher_is_better=False)


def em(
    value: float, ci: tuple[float, float] | None = None, n: int = 100, name: str = "exact_match"
) -> Metric:
    low, high = ci if ci is not None else (value - 0.01, value + 0.01)
    return Metric(name, value, n=n, ci_low=low, ci_high=high, higher_is_better=True)


def models(perplexity: Metric, forgetting: float = 12.0, **others: Metric) -> dict[str, Metric]:
    return {"perplexity": perplexity, FORGETTING_METRIC: ppl(forgetting, name=FORGETTING_METRIC), **others}


BASE = models(ppl(10.0), forgetting=12.0)
CHAMPION = models(ppl(8.60, ci=(8.40, 8.80)), forgetting=12.2)


def by_perplexity(
    candidate: dict[str, Metric], champion: dict[str, Metric] | None = None, base=BASE, **policy
):
    scores = {"base": base, "candidate": candidate} | ({"champion": champion} if champion is not None else {})
    return should_promote(scores, dataclasses.replace(BY_PERPLEXITY, **policy))


def test_without_champion_or_retrieval_the_candidate_is_compared_with_the_base() -> None:
    decision = by_perplexity(models(ppl(9.0)))
    assert decision == Decision(
        True,
        (
            "promote candidate: perplexity 9.00 vs base 10.00 (-10.0%), CI separated",
            "forgetting_perplexity 12.00 vs base 12.00 (+0.0%): "
            "general-code perplexity within the 5.0% limit",
        ),
        Arm("candidate"),
        Arm("base"),
    )


def test_candidate_better_than_champion_promotes() -> None:
    decision = by_perplexity(models(ppl(8.12, ci=(7.90, 8.30))), CHAMPION)
    assert decision.promote and decision.reference == Arm("champion")
    assert decision.reasons[0] == "promote candidate: perplexity 8.12 vs champion 8.60 (-5.6%), CI separated"


def test_champion_better_than_candidate_does_not_promote_even_when_base_is_beaten() -> None:
    decision = by_perplexity(models(ppl(9.0)), CHAMPION)
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: candidate: perplexity 9.00 vs champion 8.60 (+4.7%): the champion is better"
    )


def test_tie_does_not_promote_even_without_margin_or_significance() -> None:
    decision = by_perplexity(models(ppl(8.60)), CHAMPION, min_relative_gain=0.0, require_significance=False)
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: candidate: tie: perplexity 8.60 vs champion 8.60 (+0.0%); ties do not promote"
    )


def test_gain_below_margin_does_not_promote() -> None:
    decision = by_perplexity(models(ppl(8.55, ci=(8.0, 8.3))), CHAMPION)
    assert not decision.promote
    assert decision.reasons[0].endswith("(-0.6%): below the 1.0% margin")


def test_ci_overlap_blocks_when_significance_is_required_and_not_otherwise() -> None:
    candidate = models(ppl(8.12, ci=(7.80, 8.50)))
    decision = by_perplexity(candidate, CHAMPION)
    assert not decision.promote
    assert decision.reasons[0] == (
        "do not promote: candidate: perplexity 8.12 vs champion 8.60 (-5.6%), but the confidence intervals "
        "overlap (candidate 7.80-8.50, champion 8.40-8.80): not significant"
    )
    lenient = by_perplexity(candidate, CHAMPION, require_significance=False)
    assert lenient.promote
    assert lenient.reasons[0].endswith("CIs overlap (significance not required by the policy)")


def test_guard_metrics_block_beyond_their_limit_and_are_reported_within_it() -> None:
    champion = models(ppl(8.60, ci=(8.40, 8.80)), forgetting=12.2, exact_match=em(0.45))
    worse = by_perplexity(models(ppl(8.0, ci=(7.8, 8.2)), exact_match=em(0.40)), champion,
                          guard_metrics=("exact_match",))  # fmt: skip
    assert not worse.promote
    assert worse.reasons[0] == (
        "do not promote: candidate: exact_match 0.400 vs champion 0.450 (-11.1%): "
        "guard metric worsened beyond the 2.0% limit"
    )
    within = by_perplexity(models(ppl(8.0, ci=(7.8, 8.2)), exact_match=em(0.445)), champion,
                           guard_metrics=("exact_match",))  # fmt: skip
    assert within.promote
    assert "exact_match 0.445 vs champion 0.450 (-1.1%): guard metric within the 2.0% limit" in within.reasons
    missing = by_perplexity(models(ppl(8.0, ci=(7.8, 8.2))), CHAMPION, guard_metrics=("exact_match",))
    assert missing.reasons[0] == (
        "do not promote: candidate: exact_match (guard metric) was not measured for the candidate"
    )


def test_forgetting_is_checked_against_the_base_and_must_be_measured() -> None:
    beyond = by_perplexity(models(ppl(8.0, ci=(7.8, 8.2)), forgetting=12.9), CHAMPION)
    assert beyond.reasons[0] == (
        "do not promote: candidate: forgetting_perplexity 12.90 vs base 12.00 (+7.5%): "
        "general-code perplexity worsened beyond the 5.0% limit"
    )
    # within 5% of the base (12.0 * 1.05 = 12.6) though worse than a champion that forgot less
    champion = models(ppl(8.60, ci=(8.40, 8.80)), forgetting=11.0)
    assert by_perplexity(models(ppl(8.0, ci=(7.8, 8.2)), forgetting=12.5), champion).promote
    bare = {"perplexity": ppl(8.0, ci=(7.8, 8.2))}
    blocked = by_perplexity(bare, base={"perplexity": ppl(10.0)})
    assert blocked.reasons == (
        "do not promote: candidate: forgetting_perplexity (general-code perplexity) was not measured for the "
        "candidate",
    )
    assert by_perplexity(bare, base={"perplexity": ppl(10.0)}, max_forgetting_regression=None).promote


def test_too_small_different_or_missing_eval_sets_do_not_promote() -> None:
    small = Metric("perplexity", 5.0, n=7, ci_low=None, ci_high=None, higher_is_better=False)
    decision = by_perplexity(models(small), base=models(ppl(10.0, n=7)), require_significance=False)
    assert decision.reasons[0] == (
        "do not promote: candidate: eval set too small (n=7 < 20) for a confidence interval; "
        "not promoting on noise (hold out more: an earlier ingest --cut, or clean's --eval-fraction where "
        "there is no history; or ask for more: evaluate's --line-samples, run's --eval line_samples=N)"
    )
    other_set = by_perplexity(models(ppl(8.0, ci=(7.8, 8.2))), models(ppl(8.60, ci=(8.40, 8.80), n=80)))
    assert "different eval sets (n=100 vs n=80)" in other_set.reasons[0]
    no_primary = by_perplexity({"exact_match": em(0.5), FORGETTING_METRIC: ppl(12.0, name=FORGETTING_METRIC)})
    assert no_primary.reasons[0] == (
        "do not promote: candidate: the candidate has no 'perplexity' metric, the policy's primary metric "
        "(it has exact_match, forgetting_perplexity)"
    )
    assert by_perplexity(models(ppl(8.0)), {"exact_match": em(0.4)}).reasons[0] == (
        "do not promote: candidate: the champion has no 'perplexity' metric to compare with"
    )
    assert should_promote({"base": BASE}).reasons == ("do not promote: no candidate arm was scored",)


def test_metrics_that_disagree_on_direction_are_an_error() -> None:
    flipped = Metric("perplexity", 8.0, n=100, ci_low=7.9, ci_high=8.1, higher_is_better=True)
    with pytest.raises(RepotuneError, match="higher is better"):
        by_perplexity(models(flipped))


@pytest.mark.parametrize(
    "settings",
    [
        {"primary": ""},
        {"min_relative_gain": -0.01},
        {"min_relative_gain": float("nan")},
        {"max_forgetting_regression": -0.1},
        {"max_perplexity_regression": float("inf")},
        {"max_marker_share_increase": -0.01},
        {"max_guard_regression": -1.0},
        {"guard_metrics": "exact_match"},
        {"guard_metrics": ("exact_match", "exact_match")},
        {"guard_metrics": ("",)},
        {"secondary": "line_exact_match"},
    ],
)
def test_policy_rejects_invalid_settings(settings: dict[str, object]) -> None:
    with pytest.raises(RepotuneError, match="policy"):
        Policy(**settings)  # type: ignore[arg-type]


# The four arms on 200 paired samples: per-sample edit similarities and exact matches.


def per_sample(mean: float, spread: float, seed: int, n: int = 200) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, mean + rng.uniform(-spread, spread))) for _ in range(n)]


def arm(
    es: list[float], em_values: list[float], markers: list[float] | None = None
) -> dict[str, list[float]]:
    return {ES: es, EM: em_values, MARKER: markers if markers is not None else [0.0] * len(es)}


def summarized(
    samples: dict[str, list[float]], model_level: dict[str, Metric] | None = None
) -> dict[str, Metric]:
    metrics = {
        name: summarize(name, values, higher_is_better=name != MARKER) for name, values in samples.items()
    }
    return {**(model_level or {}), **metrics}


def four_arms(candidate_es: list[float], retrieval_es: list[float], **extra: dict[str, list[float]]):
    """Base and base + retrieval fixed; the candidate's arms given; base + retrieval is the reference."""
    difficulty = per_sample(0.25, 0.2, seed=1)
    samples = {
        "base": arm(difficulty, [0.0] * 200),
        "base_retrieval": arm([v + 0.02 for v in difficulty], [0.0] * 200),
        "candidate": arm(candidate_es, [0.0] * 200),
        "candidate_retrieval": arm(retrieval_es, [0.0] * 200),
    }
    for key, values in extra.items():
        samples[key] = {**samples[key], **values}
    model_level = {
        "base": models(ppl(11.0)),
        "candidate": models(ppl(9.4)),
    }
    scores = {key: summarized(values, model_level.get(key)) for key, values in samples.items()}
    return scores, samples


def test_the_best_arm_that_beats_base_with_retrieval_pair_by_pair_is_chosen() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    # Retrieval helps the tuned model more than it helps the base: +0.10 and +0.06 on every sample.
    scores, samples = four_arms([v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty])
    decision = should_promote(scores, Policy(), samples)
    assert (
        decision.promote
        and decision.arm == Arm("candidate", True)
        and decision.reference == Arm("base", True)
    )
    assert decision.reasons[0].startswith(
        "promote candidate + retrieval: line_edit_similarity 0.344 vs base + retrieval 0.264 (+30.3%), "
        "paired 95% CI of the difference +0.080 to +0.080: significant"
    )
    assert any(r.startswith("also scored: candidate: line_edit_similarity") for r in decision.reasons)


def test_where_retrieval_hurts_the_base_model_the_candidate_must_beat_the_base_alone() -> None:
    """A team without fine-tuning serves the base model the better way: where the retrieved context
    only distracts it, beating base + retrieval is no gain over what the team has."""
    difficulty = per_sample(0.25, 0.2, seed=1)
    scores, samples = four_arms([v + 0.04 for v in difficulty], [v + 0.03 for v in difficulty])
    assert should_promote(scores, Policy(), samples).promote  # +0.02 over base + retrieval, the better
    samples["base"] = arm([v + 0.05 for v in difficulty], [0.0] * 200)
    scores["base"] = summarized(samples["base"], models(ppl(11.0)))
    decision = should_promote(scores, Policy(), samples)
    assert not decision.promote and decision.reference == Arm("base")
    assert decision.reasons[0].startswith(
        "do not promote: candidate: line_edit_similarity 0.284 vs base 0.294"
    )


def test_the_arm_without_retrieval_is_chosen_when_it_is_the_better_one() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    scores, samples = four_arms([v + 0.08 for v in difficulty], [v + 0.01 for v in difficulty])
    decision = should_promote(scores, Policy(), samples)
    assert decision.promote and decision.arm == Arm("candidate")
    # And a policy that rules retrieval out never picks it.
    scores, samples = four_arms([v + 0.01 for v in difficulty], [v + 0.10 for v in difficulty])
    assert should_promote(scores, Policy(allow_retrieval=False), samples).arm == Arm("candidate")


def test_noise_that_overlaps_the_reference_pair_by_pair_does_not_promote() -> None:
    # The candidate's mean is higher, but sample by sample it is as often worse as better.
    noisy = [min(1.0, max(0.0, v)) for v in per_sample(0.29, 0.35, seed=7)]
    scores, samples = four_arms(noisy, noisy)
    decision = should_promote(scores, Policy(), samples)
    assert not decision.promote
    assert "includes no gain: not significant" in decision.reasons[0]
    assert decision.arm == Arm("candidate")  # the best arm found, reported even when refused
    # The candidate's mean is above base + retrieval's, so nothing says to serve retrieval alone.
    assert not any("scored best of all arms" in r for r in decision.reasons)


def test_when_base_with_retrieval_beats_every_candidate_arm_the_decision_says_to_serve_it() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    # base + retrieval is difficulty + 0.02: the candidate's arms stay below it on every sample.
    scores, samples = four_arms([v + 0.01 for v in difficulty], [v - 0.01 for v in difficulty])
    decision = should_promote(scores, Policy(), samples)
    assert not decision.promote and decision.arm == Arm("candidate")
    assert decision.reasons[0].startswith("do not promote: candidate: line_edit_similarity")
    assert decision.reasons[1].startswith(
        "the base + retrieval scored best of all arms on line_edit_similarity: retrieval without "
        "fine-tuning is what to serve"
    )
    # Where the base model alone did better still, retrieval earned nothing either: it is the one to keep.
    samples_no_gain = {**samples, "base": arm([v + 0.03 for v in difficulty], [0.0] * 200)}
    scores_no_gain = {**scores, "base": summarized(samples_no_gain["base"], models(ppl(11.0)))}
    quiet = should_promote(scores_no_gain, Policy(), samples_no_gain)
    assert not quiet.promote and quiet.reference == Arm("base")
    assert not any("base + retrieval scored best" in r for r in quiet.reasons)
    assert any(r.startswith("the base model alone scored best of all arms") for r in quiet.reasons)
    # A champion is the reference once there is one: it is served already, and nothing is said.
    scores["champion_retrieval"], samples["champion_retrieval"] = (
        scores["base_retrieval"],
        samples["base_retrieval"],
    )
    refused = should_promote(scores, Policy(), samples)
    assert refused.reference == Arm("champion", True) and not refused.promote
    assert not any("scored best of all arms" in r for r in refused.reasons)


def test_an_arm_that_writes_diff_lines_more_often_than_base_is_refused_for_the_clean_one() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    markers = [1.0] * 20 + [0.0] * 180  # one completion in ten starts like a diff line
    scores, samples = four_arms(
        [v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty], candidate_retrieval={MARKER: markers}
    )
    decision = should_promote(scores, Policy(), samples)
    assert decision.promote and decision.arm == Arm("candidate")
    assert any("line_diff_marker_share 0.100 vs base + retrieval 0.00" in r for r in decision.reasons)
    # Both dirty: nothing is promoted, and the reason says why.
    scores, samples = four_arms(
        [v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty],
        candidate={MARKER: markers}, candidate_retrieval={MARKER: markers},
    )  # fmt: skip
    refused = should_promote(scores, Policy(), samples)
    assert not refused.promote
    assert refused.reasons[0] == (
        "do not promote: candidate + retrieval: line_diff_marker_share 0.100 vs base + retrieval 0.00 "
        "(from 0): diff-marker share worsened beyond the +0.000 limit"
    )


def test_a_significant_loss_on_exact_match_blocks_an_edit_similarity_gain() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    hits = [1.0] * 60 + [0.0] * 140
    scores, samples = four_arms(
        [v + 0.06 for v in difficulty], [v + 0.07 for v in difficulty],
        base_retrieval={EM: hits}, candidate={EM: [0.0] * 200}, candidate_retrieval={EM: [0.0] * 200},
    )  # fmt: skip
    decision = should_promote(scores, Policy(), samples)
    assert not decision.promote
    assert decision.reasons[0].startswith(
        "do not promote: candidate + retrieval: line_exact_match 0.00 vs base + retrieval 0.300 (-100.0%), "
        "paired 95% CI of the difference"
    )
    assert decision.reasons[0].endswith("significantly worse")


def test_perplexity_guards_the_candidate_against_the_reference_model() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    scores, samples = four_arms([v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty])
    scores["candidate"] = {**scores["candidate"], "perplexity": ppl(12.0)}  # base's is 11.0
    decision = should_promote(scores, Policy(), samples)
    assert not decision.promote
    assert (
        "perplexity 12.00 vs base 11.00 (+9.1%): perplexity worsened beyond the 5.0% limit"
        in (decision.reasons[0])
    )
    assert should_promote(scores, Policy(max_perplexity_regression=None), samples).promote


def test_perplexities_read_as_different_tokens_are_not_compared() -> None:
    """A champion on another base model cuts the code into other tokens: its perplexity per token says
    nothing about the candidate's, so the perplexity limit does not apply against it (and says so)."""
    difficulty = per_sample(0.25, 0.2, seed=1)
    scores, samples = four_arms([v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty])
    samples["champion_retrieval"] = arm([v + 0.04 for v in difficulty], [0.0] * 200)
    read = {"candidate": "same", "base": "same"}

    def decided(champion_tokens: str) -> Decision:
        model_level = models(dataclasses.replace(ppl(5.0), tokens=champion_tokens))
        scored = {key: dict(metrics) for key, metrics in scores.items()}
        for key, tokens in read.items():
            scored[key]["perplexity"] = dataclasses.replace(scored[key]["perplexity"], tokens=tokens)
        scored["champion_retrieval"] = summarized(samples["champion_retrieval"], model_level)
        return should_promote(scored, Policy(), samples)

    # Read as the same tokens, the champion's 5.00 against the candidate's 9.40 holds promotion back.
    same = decided("same")
    assert same.reference == Arm("champion", True) and not same.promote
    worse = "perplexity 9.40 vs champion + retrieval 5.00 (+88.0%): perplexity worsened beyond the 5.0% limit"
    assert same.reasons[0].endswith(worse)
    other = decided("other")
    assert other.promote and other.arm == Arm("candidate", True)
    assert (
        "perplexity 9.40 vs champion + retrieval 5.00: not compared, the two models read the code as "
        "different tokens (another tokenizer), so the perplexity limit does not apply"
    ) in other.reasons


def test_the_champion_at_its_deployed_arm_is_the_reference() -> None:
    difficulty = per_sample(0.25, 0.2, seed=1)
    scores, samples = four_arms([v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty])
    # The champion, deployed with retrieval, scored pair by pair on the same samples: as good as ours.
    samples["champion_retrieval"] = arm([v + 0.10 for v in difficulty], [0.0] * 200)
    scores["champion_retrieval"] = summarized(samples["champion_retrieval"], models(ppl(9.5)))
    decision = should_promote(scores, Policy(), samples)
    assert decision.reference == Arm("champion", True)
    assert not decision.promote
    assert decision.reasons[0].startswith("do not promote: candidate + retrieval: tie: line_edit_similarity")


def test_the_decision_says_how_the_chosen_arm_fills_a_gap_best() -> None:
    """``Decision.fim``: FIM prompts (the suffix in view) where the chosen arm filled the FIM spans at
    least as well with them as from the prefix alone; serving follows it (``repotune serve --fim``)."""
    from repotune.evaluate.decide import fills_with_fim

    fim, alone = "fim_edit_similarity", "fim_prefix_only_edit_similarity"
    difficulty = per_sample(0.25, 0.2, seed=1)
    gaps = per_sample(0.3, 0.2, seed=2)

    def decided(fim_gain: float) -> Decision:
        shifted = [min(1.0, max(0.0, v + fim_gain)) for v in gaps]
        extra = {key: {alone: gaps} for key in ("base", "base_retrieval")} | {
            key: {alone: gaps, fim: shifted} for key in ("candidate", "candidate_retrieval")
        }
        scores, samples = four_arms([v + 0.06 for v in difficulty], [v + 0.10 for v in difficulty], **extra)
        return should_promote(scores, Policy(), samples)

    worse, better = decided(-0.15), decided(+0.05)  # SmolLM2 after the CPU recipe: 0.146 against 0.335
    assert worse.promote and worse.arm == Arm("candidate", True) and worse.fim is False
    assert worse.as_dict()["fim"] is False
    assert better.arm == Arm("candidate", True) and better.fim is True
    es = lambda value: summarize("edit_similarity", [value] * 30, higher_is_better=True)  # noqa: E731
    # a model without FIM tokens is scored from the prefix alone, and is served that way
    assert fills_with_fim({"base": {alone: es(0.3)}}, Arm("base")) is False
    # a retrieval arm with no scores of its own reads its model's
    assert fills_with_fim({"candidate": {fim: es(0.3), alone: es(0.3)}}, Arm("candidate", True)) is True
    assert fills_with_fim({"candidate": {}}, Arm("candidate")) is None  # no FIM spans scored
