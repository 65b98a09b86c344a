from __future__ import annotations

import math

import numpy as np
import pytest

from repotune.errors import RepotuneError
from repotune.evaluate.metrics import (
    MIN_SAMPLES_FOR_CI,
    Metric,
    bootstrap_ci,
    chrf,
    edit_similarity,
    exact_match,
    perplexity,
    rouge_l,
    summarize,
    summarize_perplexity,
    token_weighted_perplexity,
)


def test_exact_match_ignores_trailing_whitespace_only() -> None:
    assert exact_match("return x\n", "return x") == 1.0
    assert exact_match("return x", "return x  \n\n") == 1.0
    assert exact_match("  return x", "return x") == 0.0
    assert exact_match("return y", "return x") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("", "x") == 0.0


def test_edit_similarity_is_one_minus_levenshtein_over_longer_length() -> None:
    # kitten -> sitting: 3 edits, longer string 7 characters
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("abc", "xyz") == 0.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("", "abc") == 0.0
    assert edit_similarity("abc\n", "abc") == 1.0


def test_edit_similarity_counts_unicode_code_points() -> None:
    assert edit_similarity("héllo", "hello") == pytest.approx(0.8)
    assert edit_similarity("日本語", "日本人") == pytest.approx(2 / 3)


def test_rouge_l_f1_on_tokens() -> None:
    # LCS "a c d" of 4 and 4 tokens: precision = recall = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    # punctuation is a token: foo . bar ( x ) vs foo . baz ( x ), LCS 5 of 6
    assert rouge_l("foo.bar(x)", "foo.baz(x)") == pytest.approx(5 / 6)
    # precision 2/2, recall 2/4: F1 = 2/3
    assert rouge_l("a b", "a x b y") == pytest.approx(2 / 3)
    assert rouge_l("a b", "c d") == 0.0


def test_rouge_l_empty_and_unicode() -> None:
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "x = 1") == 0.0
    assert rouge_l("x = 1", "") == 0.0
    assert rouge_l("größe = 1", "größe = 2") == pytest.approx(2 / 3)


def test_chrf_hand_computed_values() -> None:
    assert chrf("ab", "ab") == 1.0
    assert chrf("ab", "cd") == 0.0
    # order 1: P = R = 1/2; order 2: P = R = 0; averaged P = R = 1/4, and F-beta of equal P and R is P
    assert chrf("ab", "ac") == pytest.approx(0.25)
    # orders 1-3: P = R = 2/3, 1/2, 0 -> 7/18
    assert chrf("abc", "abd") == pytest.approx(7 / 18)
    # only order 1 exists in both: P = 1, R = 1/2; F2 = 5 * 1 * 0.5 / (4 * 1 + 0.5) = 5/9
    assert chrf("a", "ab") == pytest.approx(5 / 9)
    # beta = 1 weighs precision and recall equally: 2 * 1 * 0.5 / 1.5
    assert chrf("a", "ab", beta=1) == pytest.approx(2 / 3)


def test_chrf_matches_sacrebleu_default() -> None:
    # sacrebleu 2.6.0 CHRF().sentence_score(hyp, [ref]).score / 100
    value = chrf("def add(a, b): return a + b", "def add(x, y): return x + y")
    assert value == pytest.approx(0.5437893139712026, abs=1e-12)


def test_chrf_ignores_whitespace_and_handles_empty_and_unicode() -> None:
    assert chrf("a b\n\tc", "abc") == 1.0
    assert chrf("", "") == 1.0
    assert chrf("  ", "\n") == 1.0
    assert chrf("", "abc") == 0.0
    assert chrf("abc", "") == 0.0
    assert chrf("日本語", "日本語") == 1.0
    assert 0.0 < chrf("naïve", "naive") < 1.0


def test_string_metrics_stay_in_unit_interval() -> None:
    pairs = [("def f(x):", "def g(y):"), ("", "a"), ("αβγ", "αβ"), ("x" * 50, "x")]
    for metric in (exact_match, edit_similarity, rouge_l, chrf):
        for prediction, reference in pairs:
            assert 0.0 <= metric(prediction, reference) <= 1.0


def test_perplexity() -> None:
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(4 * math.log(2), 4) == pytest.approx(2.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_token_weighted_perplexity_weights_examples_by_tokens() -> None:
    # one token at perplexity 100 and 99 tokens at perplexity 2
    pairs = [(math.log(100), 1), (99 * math.log(2), 99)]
    expected = math.exp((math.log(100) + 99 * math.log(2)) / 100)
    assert token_weighted_perplexity(pairs) == pytest.approx(expected)
    assert token_weighted_perplexity(pairs) == pytest.approx(2.0798, abs=1e-4)
    # the mean of per-example perplexities (51) would let one short example dominate
    assert token_weighted_perplexity(pairs) < 3
    with pytest.raises(RepotuneError):
        token_weighted_perplexity([])


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(1).normal(size=50).tolist()
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_contains_the_mean() -> None:
    values = np.random.default_rng(2).uniform(size=40).tolist()
    low, high = bootstrap_ci(values)
    assert low < float(np.mean(values)) < high
    wider = bootstrap_ci(values, confidence=0.99)
    assert wider[0] <= low and high <= wider[1]


def test_bootstrap_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci([0.5] * 30) == (0.5, 0.5)
    with pytest.raises(RepotuneError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], confidence=1.0)


def test_summarize_reports_ci_only_from_min_samples() -> None:
    small = summarize("exact_match", [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], higher_is_better=True)
    assert small.n == 7 and small.value == pytest.approx(4 / 7)
    assert small.ci_low is None and small.ci_high is None
    assert not small.reliable
    assert "n=7: too few examples for a confidence interval" in small.describe()

    values = [float(i % 3 == 0) for i in range(MIN_SAMPLES_FOR_CI)]
    enough = summarize("exact_match", values, higher_is_better=True)
    assert enough.reliable
    assert enough.ci_low is not None and enough.ci_high is not None
    assert enough.ci_low <= enough.value <= enough.ci_high
    assert enough.describe() == "exact_match 0.350 (95% CI 0.150-0.550, n=20)"
    with pytest.raises(RepotuneError):
        summarize("exact_match", [], higher_is_better=True)


def test_summarize_perplexity_pools_tokens_and_resamples_examples() -> None:
    rng = np.random.default_rng(5)
    tokens = rng.integers(10, 200, size=30)
    pairs = [(float(t * rng.uniform(1.5, 2.5)), int(t)) for t in tokens]
    metric = summarize_perplexity("perplexity", pairs)
    assert metric.value == pytest.approx(token_weighted_perplexity(pairs))
    assert metric.higher_is_better is False
    assert metric.n == 30 and metric.reliable
    assert metric.ci_low is not None and metric.ci_high is not None
    assert metric.ci_low < metric.value < metric.ci_high
    assert summarize_perplexity("perplexity", pairs) == metric
    with pytest.raises(RepotuneError, match="example 1 has no scored tokens"):
        summarize_perplexity("perplexity", [(1.0, 3), (0.0, 0)])


def test_metric_validates_its_interval() -> None:
    with pytest.raises(RepotuneError):
        Metric("perplexity", 8.0, n=30, ci_low=9.0, ci_high=7.0, higher_is_better=False)
    with pytest.raises(RepotuneError):
        Metric("perplexity", 8.0, n=30, ci_low=7.0, ci_high=None, higher_is_better=False)
    with pytest.raises(RepotuneError):
        Metric("perplexity", math.nan, n=30, ci_low=None, ci_high=None, higher_is_better=False)
    no_ci = Metric("perplexity", 8.0, n=30, ci_low=None, ci_high=None, higher_is_better=False)
    assert not no_ci.reliable


def test_paired_relative_change_interval() -> None:
    from repotune.evaluate.metrics import paired_relative_change_ci

    reference = [(float(2.0 + (i % 7) * 0.3) * 50, 50) for i in range(40)]
    better = [(nll * 0.9, tokens) for nll, tokens in reference]
    low, high = paired_relative_change_ci(better, reference)
    assert low < high < 0  # every block improved: the whole interval is below no change
    assert paired_relative_change_ci(reference, reference) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same, non-empty"):
        paired_relative_change_ci(better[:3], reference)


def test_paired_difference_interval_sees_a_gain_that_the_spread_hides() -> None:
    from repotune.evaluate.metrics import paired_difference_ci

    rng = np.random.default_rng(3)
    reference = rng.uniform(0.0, 1.0, size=60).tolist()  # samples of every difficulty
    better = [min(1.0, v + 0.03) for v in reference]
    # The two means' own intervals overlap widely ...
    assert summarize("a", better, True).ci_low < summarize("b", reference, True).ci_high
    # ... but sample by sample the candidate never loses.
    low, high = paired_difference_ci(better, reference)
    assert 0 < low <= high <= 0.03 + 1e-9
    assert paired_difference_ci(reference, reference) == (0.0, 0.0)
    # Exact match from zero is no problem: the difference is in the score's own unit.
    assert paired_difference_ci([1.0] * 10 + [0.0] * 30, [0.0] * 40)[0] > 0
    with pytest.raises(ValueError, match="same, non-empty"):
        paired_difference_ci(better[:3], reference)


def test_vectorized_bootstrap_of_the_mean_gives_the_same_interval_as_a_loop() -> None:
    values = np.random.default_rng(5).uniform(size=50)
    assert bootstrap_ci(values) == pytest.approx(
        bootstrap_ci(values, lambda row: float(np.mean(row))), abs=1e-12
    )


def test_ranked_above_is_how_often_a_right_answer_is_more_confident_than_a_wrong_one() -> None:
    from repotune.evaluate.metrics import ranked_above

    assert ranked_above([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert ranked_above([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # right at .9 and .3; wrong at .5 and .3: .9 beats both, .3 ties one and loses one -> (2 + .5) / 4
    assert ranked_above([0.9, 0.3, 0.5, 0.3], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert ranked_above([0.9, 0.3], [1, 1]) is None and ranked_above([0.9, 0.3], [0, 0]) is None


def test_selective_scores_the_most_confident_share_at_its_threshold() -> None:
    from repotune.evaluate.metrics import selective

    confidences = [0.9, 0.1, 0.7, 0.4, 0.4, 0.2, 0.8, 0.3]
    right = [1, 0, 1, 0, 1, 0, 0, 0]
    whole, half, quarter = selective(confidences, {"em": right})
    assert whole == {"coverage": 1.0, "threshold": 0.1, "shown": 1.0, "em": 3 / 8}
    # the fourth most confident is one of two at 0.4: a threshold shows both, five of eight
    assert half == {"coverage": 0.5, "threshold": 0.4, "shown": 5 / 8, "em": 3 / 5}
    assert quarter == {"coverage": 0.25, "threshold": 0.8, "shown": 2 / 8, "em": 1 / 2}
    assert selective([], {"em": []}) == []
    with pytest.raises(ValueError, match="coverage"):
        selective([0.5], {"em": [1]}, coverages=[0])
