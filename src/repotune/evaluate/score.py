"""Scores one model on held-out data, with and without retrieval: every arm is scored by exactly this code.

Prompts come from ``repotune.data.transforms``, the module training used, so what a model is asked
here is what it learned to answer; retrieved context is rendered there too (``code_prompt`` and
``fim_prompt`` with ``context=``). Samples are drawn once (``repotune.evaluate.samples``) and every arm
answers the same ones, so per-sample scores pair up across arms.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repotune.data.transforms import code_prompt, commit_prompt, encode, fim_prompt, has_fim_tokens
from repotune.evaluate.arms import Arm
from repotune.evaluate.decide import MARKER_METRIC, PREFIX_ONLY, REPEAT_METRIC, fim_way
from repotune.evaluate.generate import (
    KEPT_PROMPTS,
    PREFIX_MIN_TOKENS,
    Completion,
    Progress,
    complete_lines,
    context_limit,
    rewrites_line_above,
    starts_like_training_format,
    tokenized,
    window_nll,
    windows,
)
from repotune.evaluate.metrics import (
    Metric,
    chrf,
    edit_similarity,
    exact_match,
    ranked_above,
    rouge_l,
    selective,
    summarize,
    summarize_perplexity,
)
from repotune.evaluate.samples import Samples, ScoredText, draw_samples
from repotune.evaluate.settings import ScoringConfig
from repotune.kvcache import PrefixCache, plain_cache

__all__ = [
    "ArmScores",
    "Scorer",
    "ScoringConfig",
    "confidence_summary",
    "draw_samples",
    "metric_from_dict",
    "metric_to_dict",
]

PAIRED_METRICS = (
    "line_exact_match",
    "line_edit_similarity",
    "fim_exact_match",
    "fim_edit_similarity",
    f"{PREFIX_ONLY}_exact_match",
    f"{PREFIX_ONLY}_edit_similarity",
)
"""Completion metrics kept per sample, so arms can be compared pair by pair."""
CONFIDENCE = "line_confidence"
"""How sure the model was of each line completion (``Completion.confidence``), kept per sample beside
its scores: what showing only confident completions would have shown (``confidence_summary``)."""

TASKS = {
    "line": "lines",
    PREFIX_ONLY: "FIM spans from the prefix alone",
    "fim": "FIM spans with their suffix",
    "commit": "commit subjects",
}
"""What each completion task asks, in the log."""


@dataclass(frozen=True)
class ArmScores:
    """What one arm scored: summarized metrics, per-sample scores and its answers."""

    metrics: dict[str, Metric]
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    """Per-sample scores of the completion metrics, in sample order (the same order in every arm)."""
    answers: dict[str, list[str]] = field(default_factory=dict)
    """``line`` and ``fim``: each sample's answer, in sample order; ``line_raw``: the line answers with
    special tokens kept, as the format check read them."""


@dataclass(frozen=True)
class Contexts:
    """Retrieved context for each line and FIM sample, rendered for one tokenizer."""

    lines: list[str]
    fims: list[str]


class Scorer:
    """One loaded model (merged folder) and its tokenizer, scoring ``Samples`` with and without context."""

    def __init__(self, model_dir: Path, config: ScoringConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar of weights loaded, redrawn with \r, in every log
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # float32 everywhere: the arms are compared on small differences, and a 0.1-2B model fits.
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        self.fim = has_fim_tokens(self.tokenizer)
        self.max_prompt_tokens = context_limit(self.model) - config.max_new_tokens
        """The longest prompt the model can take and still write ``max_new_tokens``."""
        self._answered: dict[str, Completion] = {}
        plain = plain_cache(self.model)
        self.prefixes = PrefixCache(self.model, PREFIX_MIN_TOKENS, entries=KEPT_PROMPTS) if plain else None
        """The caches of the last prompts read alone (on a CPU), for the next that start as one does."""

    def perplexity(
        self, name: str, texts: Sequence[ScoredText], what: str, log: Callable[[str], None]
    ) -> Metric | None:
        """``name``, the perplexity of the scored windows of ``texts``, with a digest of the tokens it
        scored (``Metric.tokens``); None when no window scores a token."""
        tokens = tokenized(texts, self.tokenizer)
        chosen = windows(tokens, self.config.seq_len, self.config.max_blocks, self.config.seed)
        progress = Progress(log, what, len(chosen), every=self.config.progress_seconds, unit=" windows")
        pairs = window_nll(
            self.model, tokens, chosen, batch_size=self.config.window_batch_size, progress=progress
        )
        if not any(count for _, count in pairs):
            return None
        digest = hashlib.sha256()
        for window in chosen:
            ids, scored = tokens[window.text]
            digest.update(
                repr((ids[window.begin : window.end], scored[window.score_from : window.end])).encode()
            )
        metric = summarize_perplexity(name, [pair for pair in pairs if pair[1] > 0])
        return dataclasses.replace(metric, tokens=digest.hexdigest()[:16])

    def complete(
        self,
        prompts: Sequence[str],
        what: str,
        log: Callable[[str], None],
        befores: Sequence[str | None] | None = None,
    ) -> list[Completion]:
        """Completions of ``prompts``; a prompt this model already answered is not generated again.

        Greedy decoding gives one answer per prompt, batched or not, so a retrieval arm's prompt that
        found no context (the same text as without retrieval) reuses the answer it already has.
        ``befores``: the code above each prompt's cursor, whose last line an answer must not write
        again (``retry_line_above``; None for a prompt whose answer is not code).
        """
        above = dict(zip(prompts, befores, strict=True)) if befores and self.config.retry_line_above else None
        new = list(dict.fromkeys(p for p in prompts if p not in self._answered))
        if len(new) < len(prompts):
            log(f"  {what}: {len(prompts) - len(new)} of {len(prompts)} prompts asked before, answers reused")
        progress = Progress(log, what, len(new), every=self.config.progress_seconds)
        done = complete_lines(
            self.model,
            self.tokenizer,
            new,
            batch_size=self.config.batch_size,
            max_new_tokens=self.config.max_new_tokens,
            progress=progress,
            line_penalty=self.config.line_repeat_penalty,
            prefixes=self.prefixes,
            befores=[above[p] for p in new] if above is not None else None,
        )
        retried = sum(c.retried for c in done)
        if retried:
            log(f"  {what}: {retried} answers that wrote the line above again were decoded again")
        self._answered.update(zip(new, done, strict=True))
        return [self._answered[p] for p in prompts]

    def score(
        self,
        samples: Samples,
        model: str,
        log: Callable[[str], None],
        *,
        contexts: Contexts | None = None,
        retrieval_only: bool = False,
    ) -> dict[Arm, ArmScores]:
        """The arms of this model: without retrieval (every task), and with ``contexts`` when given
        (completion tasks only). ``retrieval_only`` scores the retrieval arm alone (a champion
        deployed with retrieval), its model-level metrics (perplexity, forgetting, commits) included.

        The FIM spans are filled both ways (FIM prompt, prefix alone) by the first arm scored; the
        retrieval arm after it fills them only the way its model did better (``fim_way``), as serving
        will ask it: the other way would cost the evaluate step a sixth more time for a number that
        decides nothing."""
        arms: dict[Arm, ArmScores] = {}
        way: bool | None = None
        if not retrieval_only:
            alone = self._score_arm(samples, Arm(model), None, log, model_level=True)
            arms[Arm(model)], way = alone, fim_way(alone.metrics)
        if contexts is not None:
            arm = Arm(model, True)
            arms[arm] = self._score_arm(samples, arm, contexts, log, model_level=retrieval_only, fim=way)
        return arms

    def _score_arm(
        self,
        samples: Samples,
        arm: Arm,
        contexts: Contexts | None,
        log: Callable[[str], None],
        *,
        model_level: bool,
        fim: bool | None = None,
    ) -> ArmScores:
        """``fim``: fill the FIM spans with FIM prompts only (True) or from the prefix alone only (False);
        None: both ways (FIM prompts where the model has FIM tokens)."""
        metrics: dict[str, Metric] = {}
        per_sample: dict[str, list[float]] = {}
        answers: dict[str, list[str]] = {}
        if model_level:
            code = "added code" if samples.mode == "temporal" else "held-out code"
            for name, texts, what in (
                ("perplexity", samples.perplexity, code),
                ("forgetting_perplexity", samples.general, "general code"),
            ):
                metric = (
                    self.perplexity(name, texts, f"{arm.label}: perplexity of {what}", log) if texts else None
                )
                if metric is not None:
                    metrics[name] = metric
        asks = self._asks(samples, contexts, model_level=model_level, fim=fim)
        done = self._complete_all(asks, arm.label, log)
        if "line" in asks:
            answers["line"] = [c.text for c in done["line"]]
            answers["line_raw"] = [c.raw for c in done["line"]]  # what the format check read
            metrics |= _scored("line", answers["line"], [s.expected for s in samples.lines], per_sample)
            markers = [
                float(starts_like_training_format(c.raw, s.expected, s.prefix))
                for c, s in zip(done["line"], samples.lines, strict=True)
            ]
            metrics[MARKER_METRIC] = summarize(MARKER_METRIC, markers, higher_is_better=False)
            per_sample[MARKER_METRIC] = markers
            repeats = [
                float(rewrites_line_above(c.text, s.prefix))
                for c, s in zip(done["line"], samples.lines, strict=True)
            ]
            metrics[REPEAT_METRIC] = summarize(REPEAT_METRIC, repeats, higher_is_better=False)
            per_sample[REPEAT_METRIC] = repeats
            per_sample[CONFIDENCE] = [c.confidence for c in done["line"]]
        middles = [s.middle for s in samples.fims]
        for task in (PREFIX_ONLY, "fim"):
            if task in asks:
                answers[task] = [c.text for c in done[task]]
                metrics |= _scored(task, answers[task], middles, per_sample)
        if "commit" in asks:
            subjects = [subject for _, subject in samples.commits]
            answers["commit"] = [c.text.strip() for c in done["commit"]]
            for name, score in (("rouge_l", rouge_l), ("chrf", chrf)):
                values = [score(c, e) for c, e in zip(answers["commit"], subjects, strict=True)]
                metrics[f"commit_{name}"] = summarize(f"commit_{name}", values, higher_is_better=True)
        return ArmScores(metrics, per_sample, answers)

    def _asks(
        self, samples: Samples, contexts: Contexts | None, *, model_level: bool, fim: bool | None
    ) -> dict[str, tuple[list[str], list[str | None]]]:
        """Each completion task's prompts for an arm, with the code above each prompt's cursor (None:
        an answer that is not code, a commit subject). ``line``: the line samples; ``PREFIX_ONLY``: the
        FIM spans asked without their suffix, as a model without FIM tokens is asked them (and as a
        server may ask any model: the line is continued from the code before the cursor); ``fim``: the
        spans as FIM prompts; ``commit``: the commits' subject lines from their diffs."""
        tokenizer = self.tokenizer
        asks: dict[str, tuple[list[str], list[str | None]]] = {}
        lines = contexts.lines if contexts else [""] * len(samples.lines)
        fims = contexts.fims if contexts else [""] * len(samples.fims)
        if samples.lines:
            asks["line"] = (
                [
                    code_prompt(s.prefix, path=s.path, tokenizer=tokenizer, context=c)
                    for s, c in zip(samples.lines, lines, strict=True)
                ],
                [s.prefix for s in samples.lines],
            )
        if samples.fims and fim is not True:
            asks[PREFIX_ONLY] = (
                [
                    code_prompt(s.prefix, path=s.path, tokenizer=tokenizer, context=c)
                    for s, c in zip(samples.fims, fims, strict=True)
                ],
                [s.prefix for s in samples.fims],
            )
        if samples.fims and self.fim and fim is not False:
            asks["fim"] = (
                [
                    fim_prompt(s.prefix, s.suffix, path=s.path, tokenizer=tokenizer, context=c)
                    for s, c in zip(samples.fims, fims, strict=True)
                ],
                [s.prefix for s in samples.fims],
            )
        if model_level and samples.commits:
            asks["commit"] = (
                [commit_prompt(d, tokenizer) for d, _ in samples.commits],
                [None] * len(samples.commits),
            )
        return asks

    def _complete_all(
        self, asks: dict[str, tuple[list[str], list[str | None]]], label: str, log: Callable[[str], None]
    ) -> dict[str, list[Completion]]:
        """The answers to every task of ``asks``, decoded together: a decoding step costs about as much
        for 8 rows as for 32 on a CPU (it reads every weight once), so an arm's tasks share batches
        rather than each closing its own last, emptying one."""
        if not asks:
            return {}
        log(
            f"  {label}: " + ", ".join(f"{len(prompts)} {TASKS[task]}" for task, (prompts, _) in asks.items())
        )
        prompts = [p for ps, _ in asks.values() for p in ps]
        done = iter(
            self.complete(prompts, f"{label}: completions", log, [b for _, bs in asks.values() for b in bs])
        )
        return {task: [next(done) for _ in ps] for task, (ps, _) in asks.items()}


def _scored(
    task: str, predictions: list[str], expected: list[str], per_sample: dict[str, list[float]]
) -> dict[str, Metric]:
    """Exact match and edit similarity of ``task``'s answers, summarized; per sample into ``per_sample``."""
    metrics = {}
    for name, score in (("exact_match", exact_match), ("edit_similarity", edit_similarity)):
        values = [score(p, e) for p, e in zip(predictions, expected, strict=True)]
        per_sample[f"{task}_{name}"] = values
        metrics[f"{task}_{name}"] = summarize(f"{task}_{name}", values, True)
    return metrics


def confidence_summary(per_sample: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """For each arm with line confidences: how often a right line was more confident than a wrong one
    (``ranked_above``, None where every line was right or every one wrong), and its line exact match
    and edit similarity over all its completions, the most confident half and quarter (``selective``)."""
    summary = {}
    for arm, scores in per_sample.items():
        confidences = scores.get(CONFIDENCE)
        if not confidences:
            continue
        shown = {name: scores[name] for name in ("line_exact_match", "line_edit_similarity")}
        summary[arm] = {
            "ranked_above": ranked_above(confidences, scores["line_exact_match"]),
            "shown": selective(confidences, shown),
        }
    return summary


def retrieval_contexts(
    index: Any, samples: Samples, tokenizer: Any, max_tokens: int, *, max_prompt_tokens: int | None = None
) -> Contexts:
    """The context ``build_context`` retrieves for each line and FIM sample, within ``max_tokens``.

    With ``max_prompt_tokens`` (the model's context less the tokens it generates), a sample's context
    also leaves room for its own prompt: a prompt too long for the model loses its oldest tokens,
    which would be the retrieved context and, for FIM, the ``<fim_prefix>`` sentinel.
    """
    from repotune.retrieval import build_context

    def budget(prompt: str) -> int:
        if max_prompt_tokens is None:
            return max_tokens
        return min(max_tokens, max_prompt_tokens - len(encode(tokenizer, prompt)))

    lines = []
    for s in samples.lines:
        room = budget(code_prompt(s.prefix, path=s.path, tokenizer=tokenizer))
        lines.append(
            build_context(index, s.prefix, tokenizer=tokenizer, path=s.path, max_tokens=room)
            if room > 0
            else ""
        )
    fims = []
    for s in samples.fims:
        room = budget(fim_prompt(s.prefix, s.suffix, path=s.path, tokenizer=tokenizer))
        fims.append(
            build_context(index, s.prefix, tokenizer=tokenizer, path=s.path, suffix=s.suffix, max_tokens=room)
            if room > 0
            else ""
        )
    return Contexts(lines, fims)


def context_budget(summary: dict[str, Any], index: Any | None = None) -> int:
    """Tokens of retrieved context to put in front of a prompt: the budget the model was trained with
    (its recipe's ``data.retrieval_context_tokens``, where ``data.retrieval_rate`` gave training examples
    context), else the budget of the index searched (its ``max_context_tokens``), else the retrieval
    default: what serving puts in front of a request with the same model and index.

    A model trained without context learned no budget; the recipe's number then means nothing, and a
    small one (the demo's 96 tokens) fits no chunk of 20 lines of code, which would leave the
    retrieval arms with no context at all.
    """
    from repotune.retrieval import RetrievalConfig
    from repotune.retrieval.shipped import recipe_retrieval

    _, budget = recipe_retrieval(summary)
    if budget is not None:
        return budget
    return index.config.max_context_tokens if index is not None else RetrievalConfig().max_context_tokens


def load_or_build_index(
    index_dir: Path | None, data: Path, log: Callable[[str], None], recipe: Any = None
) -> Any | None:
    """The index saved in ``index_dir``, else one built over the training records of the clean folder
    ``data`` with the index settings of ``recipe`` (a recipe dict: its embedding model, if it names
    one); None when there is nothing to retrieve from."""
    from repotune.clean.layout import CleanLayout
    from repotune.records import read_records
    from repotune.retrieval import RetrievalIndex
    from repotune.retrieval.shipped import index_config

    if index_dir is not None:
        index = RetrievalIndex.load(index_dir)
        log(f"retrieval index: {index_dir} ({len(index):,} chunks, revision {index.revision})")
    else:
        train = CleanLayout(data).train
        if not train.is_file():
            log(f"retrieval arms not scored: {data} has no {train.name} to build an index from")
            return None
        index = RetrievalIndex.build(read_records(train), index_config(recipe), log=log)
    if len(index) == 0:
        log("retrieval arms not scored: the index holds no code or doc chunks")
        return None
    return index


def score_model(
    name: str,
    folder: Path,
    samples: Any,
    scoring: ScoringConfig,
    index: Any | None,
    budget: int,
    retrieval_only: bool,
    log: Callable[[str], None],
) -> tuple[dict[Arm, Any], Any]:
    """The model's arms, and the contexts its retrieval arm was given (None without one)."""
    scorer = Scorer(folder, scoring)
    contexts = None
    if index is not None:
        limit = scorer.max_prompt_tokens
        contexts = retrieval_contexts(index, samples, scorer.tokenizer, budget, max_prompt_tokens=limit)
    scored = scorer.score(samples, name, log, contexts=contexts, retrieval_only=retrieval_only)
    for arm, result in scored.items():
        shown = [m for m in ("line_edit_similarity", "line_exact_match", "perplexity") if m in result.metrics]
        log(f"  {arm.label}: " + "; ".join(result.metrics[m].describe() for m in shown))
    return scored, contexts


def metric_from_dict(name: str, values: dict[str, Any]) -> Metric:
    """The ``Metric`` that :func:`metric_to_dict` wrote (as in metrics.json)."""
    return Metric(
        name=name,
        value=float(values["value"]),
        n=int(values["n"]),
        ci_low=values.get("ci_low"),
        ci_high=values.get("ci_high"),
        higher_is_better=bool(values["higher_is_better"]),
        tokens=values.get("tokens"),
    )


def metric_to_dict(metric: Metric) -> dict[str, Any]:
    values = {
        "value": metric.value,
        "n": metric.n,
        "ci_low": metric.ci_low,
        "ci_high": metric.ci_high,
        "higher_is_better": metric.higher_is_better,
    }
    return values | ({"tokens": metric.tokens} if metric.tokens is not None else {})
