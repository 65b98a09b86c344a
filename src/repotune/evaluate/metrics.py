"""Evaluation metrics as pure functions, and their summaries with bootstrap confidence intervals.

String metrics score one prediction against one reference and return a float in [0, 1]. Perplexity is
pooled over tokens, not averaged over examples, so a long file weighs by its tokens. ``summarize`` and
``summarize_perplexity`` turn per-example scores into a ``Metric`` that carries its sample count and,
when the sample is big enough, a percentile-bootstrap confidence interval.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import LCSseq, Levenshtein

from repotune.errors import RepotuneError

MIN_SAMPLES_FOR_CI = 20
"""Below this many examples a bootstrap interval is too unstable to trust: no CI is reported."""

# Identifiers, numbers and single punctuation marks: `foo.bar(x)` is five tokens, so ROUGE-L sees
# code structure rather than whitespace-separated chunks.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the strings are equal once trailing whitespace is stripped from both, else 0.0."""
    return float(prediction.rstrip() == reference.rstrip())


def edit_similarity(prediction: str, reference: str) -> float:
    """1 - Levenshtein distance / max(len), over characters (code points), in [0, 1].

    The formula of the CrossCodeEval and RepoBench papers. Their scripts call `fuzz.ratio`, an
    insert/delete ratio that gives different numbers; this is the published definition. Trailing
    whitespace is stripped first, as in `exact_match`. Two empty strings are identical: 1.0.
    """
    return Levenshtein.normalized_similarity(prediction.rstrip(), reference.rstrip())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of word and punctuation tokens, in [0, 1].

    Case-sensitive (identifiers differ by case in code). Two empty strings score 1.0, one empty 0.0.
    """
    pred, ref = _TOKEN.findall(prediction), _TOKEN.findall(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = LCSseq.similarity(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def chrf(prediction: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (Popović 2015), as sacrebleu's default sentence chrF, in [0, 1].

    Whitespace is removed; precision and recall are averaged over the orders 1..n that both strings
    are long enough to have (sacrebleu's effective order), then combined as F-beta (beta=2 weighs
    recall twice as much as precision). sacrebleu reports 0-100; this reports 0-1. Unlike sacrebleu,
    two strings that are both empty after whitespace removal score 1.0: an empty completion that is
    right should not count as wrong.
    """
    if n < 1:
        raise ValueError(f"chrF order n must be at least 1, got {n}")
    hyp, ref = "".join(prediction.split()), "".join(reference.split())
    if not hyp and not ref:
        return 1.0
    precision_sum = recall_sum = 0.0
    orders = 0
    for order in range(1, n + 1):
        hyp_grams = Counter(hyp[i : i + order] for i in range(len(hyp) - order + 1))
        ref_grams = Counter(ref[i : i + order] for i in range(len(ref) - order + 1))
        if not hyp_grams or not ref_grams:
            continue
        matches = sum((hyp_grams & ref_grams).values())
        precision_sum += matches / hyp_grams.total()
        recall_sum += matches / ref_grams.total()
        orders += 1
    if orders == 0 or precision_sum + recall_sum == 0:
        return 0.0
    precision, recall = precision_sum / orders, recall_sum / orders
    factor = beta**2
    return (1 + factor) * precision * recall / (factor * precision + recall)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(nll_sum / tokens): `nll_sum` is the summed negative log-likelihood in nats over `tokens`."""
    if tokens < 1:
        raise ValueError(f"perplexity needs at least one token, got {tokens}")
    try:
        return math.exp(nll_sum / tokens)
    except OverflowError:
        return math.inf


def token_weighted_perplexity(per_example: Sequence[tuple[float, int]]) -> float:
    """Perplexity pooled over all tokens: exp(sum of nll / sum of tokens), not a mean of perplexities."""
    if not per_example:
        raise RepotuneError("no examples to compute a perplexity over")
    pairs = np.asarray(per_example, dtype=float)
    return perplexity(float(pairs[:, 0].sum()), int(pairs[:, 1].sum()))


def bootstrap_ci(
    values: Sequence[float] | Sequence[tuple[float, int]],
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic`, resampling examples with replacement.

    `values` holds one row per example: a float, or a tuple such as (nll, tokens) that `statistic`
    reduces (it receives the resampled rows as an array). The same seed gives the same interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        raise RepotuneError("no examples to bootstrap a confidence interval from")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(data), size=(n_resamples, len(data)))
    if statistic is np.mean and data.ndim == 1:
        stats = data[indices].mean(axis=1)  # the same means, in one vectorized pass
    else:
        stats = np.array([statistic(data[row]) for row in indices], dtype=float)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_relative_change_ci(
    candidate: Sequence[tuple[float, int]],
    reference: Sequence[tuple[float, int]],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap CI of perplexity(candidate) / perplexity(reference) - 1 over the same examples.

    Example i of both lists must be the same text (same tokens); resampling whole pairs keeps each
    example's difficulty on both sides, so the interval measures the difference, not the spread.
    """
    if len(candidate) != len(reference) or not candidate:
        raise ValueError("paired scores need the same, non-empty list of examples for both models")
    rows = np.array(
        [(c[0], c[1], r[0], r[1]) for c, r in zip(candidate, reference, strict=True)], dtype=float
    )

    def change(sample: np.ndarray) -> float:
        return _pooled_perplexity(sample[:, 0:2]) / _pooled_perplexity(sample[:, 2:4]) - 1.0

    return bootstrap_ci(rows, statistic=change, n_resamples=n_resamples, confidence=confidence, seed=seed)


def paired_difference_ci(
    candidate: Sequence[float],
    reference: Sequence[float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap CI of mean(candidate) - mean(reference) over per-sample scores of the same samples.

    Sample i of both lists must be the same question (the same prompt, say), answered by two models;
    resampling whole pairs keeps each sample's difficulty on both sides, so the interval measures the
    difference, not the spread of the samples. In the scores' own unit (an edit similarity of 0.25 and
    one of 0.30 differ by +0.05), so a reference at zero (an exact match rate of 0) is no problem.
    """
    if len(candidate) != len(reference) or not len(candidate):
        raise ValueError("paired scores need the same, non-empty list of samples for both models")
    differences = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    return bootstrap_ci(differences, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)


def _pooled_perplexity(pairs: np.ndarray) -> float:
    return perplexity(float(pairs[:, 0].sum()), int(pairs[:, 1].sum()))


@dataclass(frozen=True)
class Metric:
    """One summarized metric of one model on one eval set."""

    name: str
    """Metric name, e.g. `perplexity`, `exact_match`, `forgetting_perplexity`."""
    value: float
    """The point estimate over the whole eval set."""
    n: int
    """Number of examples scored (not tokens)."""
    ci_low: float | None
    """Lower bound of the bootstrap confidence interval; None when the sample is too small."""
    ci_high: float | None
    """Upper bound of the bootstrap confidence interval; None when the sample is too small."""
    higher_is_better: bool
    """True for scores such as exact match, False for losses such as perplexity."""
    confidence: float = 0.95
    """Coverage of the interval, 0 to 1."""
    tokens: str | None = None
    """For a perplexity, a digest of the token ids it scored: per-token perplexities of two models
    compare only where these are equal (a candidate and its base read the same windows as the same
    tokens; a model with another tokenizer does not). None: not recorded."""

    def __post_init__(self) -> None:
        if math.isnan(self.value):
            raise RepotuneError(f"metric {self.name} is NaN")
        if self.n < 0:
            raise RepotuneError(f"metric {self.name} has a negative sample count {self.n}")
        if (self.ci_low is None) != (self.ci_high is None):
            raise RepotuneError(f"metric {self.name} needs both CI bounds or neither")
        if self.ci_low is not None and self.ci_high is not None and self.ci_low > self.ci_high:
            raise RepotuneError(f"metric {self.name} has ci_low {self.ci_low} above ci_high {self.ci_high}")

    @property
    def reliable(self) -> bool:
        """Whether the sample is big enough to carry a confidence interval, and has one."""
        return self.n >= MIN_SAMPLES_FOR_CI and self.ci_low is not None

    def describe(self) -> str:
        """One line for a report, e.g. `perplexity 8.12 (95% CI 7.90-8.41, n=120)`."""
        if not self.reliable:
            return (
                f"{self.name} {format_value(self.value)} (n={self.n}: too few examples for a "
                f"confidence interval, at least {MIN_SAMPLES_FOR_CI} needed)"
            )
        assert self.ci_low is not None and self.ci_high is not None
        return (
            f"{self.name} {format_value(self.value)} ({self.confidence:.0%} CI "
            f"{format_value(self.ci_low)}-{format_value(self.ci_high)}, n={self.n})"
        )


def format_value(value: float) -> str:
    """Two decimals for values of 1 and more (perplexities), three significant digits below (rates)."""
    return f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:#.3g}"


def summarize(
    name: str,
    per_example_values: Sequence[float],
    higher_is_better: bool,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Metric:
    """The mean of per-example scores, with a bootstrap CI from MIN_SAMPLES_FOR_CI examples on."""
    if not per_example_values:
        raise RepotuneError(f"no examples to compute {name} over")
    values = np.asarray(per_example_values, dtype=float)
    ci = None
    if len(values) >= MIN_SAMPLES_FOR_CI:
        ci = bootstrap_ci(values, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return Metric(
        name=name,
        value=float(values.mean()),
        n=len(values),
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        higher_is_better=higher_is_better,
        confidence=confidence,
    )


def summarize_perplexity(
    name: str,
    per_example_pairs: Sequence[tuple[float, int]],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Metric:
    """Token-weighted perplexity of (nll in nats, token count) pairs; the CI resamples whole examples."""
    if not per_example_pairs:
        raise RepotuneError(f"no examples to compute {name} over")
    for i, (_, tokens) in enumerate(per_example_pairs):
        if tokens < 1:
            raise RepotuneError(f"{name}: example {i} has no scored tokens")
    ci = None
    if len(per_example_pairs) >= MIN_SAMPLES_FOR_CI:
        ci = bootstrap_ci(
            per_example_pairs, _pooled_perplexity, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
    return Metric(
        name=name,
        value=token_weighted_perplexity(per_example_pairs),
        n=len(per_example_pairs),
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        higher_is_better=False,
        confidence=confidence,
    )


COVERAGES = (1.0, 0.5, 0.25)
"""The shares of completions ``selective`` reports: all of them, the most confident half, quarter."""


def ranked_above(confidences: Sequence[float], right: Sequence[float]) -> float | None:
    """How often a right answer (``right[i]`` 1) is more confident than a wrong one (0), a tie counting
    half: the area under the ROC curve of ``confidences`` as a test of rightness (0.5: no better than
    chance, 1: every right answer above every wrong one). None when all are right or all wrong."""
    scores, labels = np.asarray(confidences, dtype=float), np.asarray(right, dtype=float) > 0.5
    good, bad = scores[labels], scores[~labels]
    if not len(good) or not len(bad):
        return None
    above = (good[:, None] > bad[None, :]).mean() + 0.5 * (good[:, None] == bad[None, :]).mean()
    return float(above)


def selective(
    confidences: Sequence[float], scores: dict[str, Sequence[float]], coverages: Sequence[float] = COVERAGES
) -> list[dict[str, float]]:
    """What a user would see if only confident completions were shown: for each share in ``coverages``,
    the threshold that shows that share (the confidence of the last completion in it, most confident
    first), the share the threshold shows (more where completions tie at it), and the mean of each of
    ``scores`` (per-sample, in the order of ``confidences``) over the completions shown."""
    values = np.asarray(confidences, dtype=float)
    if not len(values):
        return []
    ordered = np.sort(values)[::-1]
    rows = []
    for coverage in coverages:
        if not 0 < coverage <= 1:
            raise ValueError(f"a coverage must be above 0 and at most 1, got {coverage}")
        threshold = float(ordered[max(1, math.ceil(coverage * len(values))) - 1])
        shown = values >= threshold
        row = {"coverage": coverage, "threshold": threshold, "shown": float(shown.mean())}
        for name, per_sample in scores.items():
            row[name] = float(np.asarray(per_sample, dtype=float)[shown].mean())
        rows.append(row)
    return rows
