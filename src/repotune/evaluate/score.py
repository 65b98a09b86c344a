"""Scores one model on held-out data: every model compared is scored by exactly this code.

Prompts come from ``repotune.data.transforms``, the module training used, so what a model is asked
here is what it learned to answer. Task samples are drawn with a fixed seed from the held-out records
only; the same samples go to every model.
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.data.transforms import (
    TransformConfig,
    commit_pair,
    commit_prompt,
    file_header,
    fim_prompt,
    has_fim_tokens,
)
from repotune.errors import RepotuneError
from repotune.evaluate.metrics import (
    Metric,
    chrf,
    edit_similarity,
    exact_match,
    rouge_l,
    summarize,
    summarize_perplexity,
)
from repotune.records import Kind, Record

FILE_KINDS = (Kind.CODE,)


@dataclass(frozen=True)
class ScoringConfig:
    seq_len: int = 256
    """Tokens per block for perplexity."""
    max_blocks: int = 64
    """Held-out blocks scored for perplexity (each block is one bootstrap example)."""
    line_samples: int = 40
    """Lines cut from held-out code files for line completion."""
    fim_samples: int = 20
    """Spans cut from held-out code files for fill-in-the-middle (models with FIM tokens only)."""
    commit_samples: int = 20
    """Held-out commits whose subject line is generated from the diff."""
    context_chars: int = 1500
    """Characters of preceding (and, for FIM, following) code given as context."""
    max_new_tokens: int = 32
    """Tokens generated per completion (greedy)."""
    forgetting_files: int = 16
    """Files of general Python code (this interpreter's standard library) for the forgetting check."""
    forgetting_source: str | None = None
    """A folder of general code for the forgetting check; None uses the standard library."""
    seed: int = 0
    """Seed of every sample drawn."""


@dataclass(frozen=True)
class Samples:
    """The tasks every model answers: drawn once, from held-out records only."""

    perplexity_records: list[Record]
    lines: list[tuple[str, str, str]]  # (path, prefix, expected line)
    fims: list[tuple[str, str, str, str]]  # (path, prefix, expected middle, suffix)
    commits: list[tuple[str, str]]  # (diff, expected subject)
    general: list[Record]


def draw_samples(eval_records: list[Record], config: ScoringConfig) -> Samples:
    rng = random.Random(config.seed)
    code = [r for r in eval_records if r.kind in FILE_KINDS and r.file_path]
    lines: list[tuple[str, str, str]] = []
    fims: list[tuple[str, str, str, str]] = []
    candidates = []
    for record in code:
        text = record.content
        starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        for start in starts[1:]:
            end = text.find("\n", start)
            line = text[start : end if end >= 0 else len(text)]
            if len(line.strip()) >= 8:  # blank and trivial lines say nothing about the project
                candidates.append((record, start, len(line)))
    rng.shuffle(candidates)
    for record, start, length in candidates[: config.line_samples]:
        text = record.content
        lines.append(
            (
                record.file_path,
                text[max(0, start - config.context_chars) : start],
                text[start : start + length],
            )
        )
    for record, start, length in candidates[config.line_samples : config.line_samples + config.fim_samples]:
        text = record.content
        # The middle is the rest of a line from a random column: the completion an editor asks for.
        column = start + rng.randrange(0, max(1, length // 2))
        end = start + length
        fims.append(
            (
                record.file_path,
                text[max(0, column - config.context_chars) : column],
                text[column:end],
                text[end : end + config.context_chars],
            )
        )
    commits = []
    for record in (r for r in eval_records if r.kind is Kind.COMMIT):
        diff, message = commit_pair(record)
        subject = message.strip().split("\n", 1)[0].strip()
        if diff and subject:
            commits.append((diff[: config.context_chars * 2], subject))
    rng.shuffle(commits)
    return Samples(
        perplexity_records=eval_records,
        lines=lines,
        fims=fims,
        commits=commits[: config.commit_samples],
        general=_general_records(config, rng),
    )


def _general_records(config: ScoringConfig, rng: random.Random) -> list[Record]:
    root = Path(config.forgetting_source or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise RepotuneError(f"forgetting_source {root} is not a folder")
    files = sorted(p for p in root.glob("*.py") if p.is_file())  # top level only: small and general
    rng.shuffle(files)
    records = []
    for path in files[: config.forgetting_files]:
        text = path.read_text(encoding="utf-8", errors="replace")[:20_000]
        records.append(
            Record(content=text, kind=Kind.CODE, source=str(root), id=path.name, file_path=path.name)
        )
    return records


class Scorer:
    """One loaded model (merged folder) and its tokenizer, scoring ``Samples``."""

    def __init__(self, model_dir: Path, config: ScoringConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        # Packed blocks need the position-id path: no KV cache while scoring (see data/packing.py).
        self.model.config.use_cache = False
        self.fim = has_fim_tokens(self.tokenizer)
        # Per-block (nll, tokens) of each perplexity metric, for paired comparisons between models.
        self.pairs: dict[str, list[tuple[float, int]]] = {}

    def perplexity(self, records: list[Record], name: str) -> Metric:
        import torch

        from repotune.data.packing import pack, tokenize_records

        sequences = tokenize_records(records, self.tokenizer, TransformConfig(fim_rate=0.0), None)
        blocks = pack(sequences, self.config.seq_len).head(self.config.max_blocks)
        pairs = []
        with torch.no_grad():
            for i in range(len(blocks)):
                ids = torch.as_tensor(blocks.input_ids[i : i + 1], dtype=torch.long)
                positions = torch.as_tensor(blocks.position_ids[i : i + 1], dtype=torch.long)
                labels = torch.as_tensor(blocks.labels[i : i + 1], dtype=torch.long)
                logits = self.model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, :-1]
                target = labels[0, 1:]
                mask = target != -100
                nll = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
                pairs.append((float(nll), int(mask.sum())))
        self.pairs[name] = [p for p in pairs if p[1] > 0]
        return summarize_perplexity(name, self.pairs[name])

    def complete_line(self, prompt: str) -> str:
        """Greedy completion of the line that follows ``prompt``, without its newline.

        A prompt that ends with a newline is sent without it: BPE tokenizers merge a newline with the
        indentation after it into one token, so a prompt cut after the newline asks the model for a
        token sequence it never saw in training. The model writes the newline itself, and the line
        is what follows it.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        new_line = prompt.endswith("\n")
        text = prompt[:-1] if new_line else prompt
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        start = ids.shape[1]
        tokenizer = self.tokenizer

        class LineDone(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                generated = tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
                return "\n" in (generated[1:] if new_line else generated)

        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.config.max_new_tokens,
                stopping_criteria=StoppingCriteriaList([LineDone()]),
                do_sample=False,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        generated = self.tokenizer.decode(out[0, start:], skip_special_tokens=True)
        if new_line:
            if not generated.startswith("\n"):
                return ""  # the model went on with the previous line: no next line predicted
            generated = generated[1:]
        return generated.split("\n", 1)[0]

    def score(self, samples: Samples, log: Callable[[str], None]) -> dict[str, Metric]:
        metrics = {"perplexity": self.perplexity(samples.perplexity_records, "perplexity")}
        log(f"  perplexity {metrics['perplexity'].describe()}")
        if samples.general:
            metrics["forgetting_perplexity"] = self.perplexity(samples.general, "forgetting_perplexity")
        if samples.lines:
            predictions = [
                self.complete_line(file_header(path, self.tokenizer) + prefix)
                for path, prefix, _ in samples.lines
            ]
            expected = [line for _, _, line in samples.lines]
            metrics |= _scored(
                "line",
                predictions,
                expected,
                {"exact_match": exact_match, "edit_similarity": edit_similarity},
            )
            log(f"  line completion {metrics['line_edit_similarity'].describe()}")
        if samples.fims and self.fim:
            predictions = [
                self.complete_line(fim_prompt(prefix, suffix, path=path, tokenizer=self.tokenizer))
                for path, prefix, _, suffix in samples.fims
            ]
            expected = [middle for _, _, middle, _ in samples.fims]
            metrics |= _scored(
                "fim", predictions, expected, {"exact_match": exact_match, "edit_similarity": edit_similarity}
            )
        if samples.commits:
            predictions = [self.complete_line(commit_prompt(diff)) for diff, _ in samples.commits]
            expected = [subject for _, subject in samples.commits]
            metrics |= _scored("commit", predictions, expected, {"rouge_l": rouge_l, "chrf": chrf})
        return metrics


def _scored(
    task: str, predictions: list[str], expected: list[str], scores: dict[str, Callable[[str, str], float]]
) -> dict[str, Metric]:
    """One metric per scoring function (all higher-is-better), named ``{task}_{score}``."""
    pairs = list(zip(predictions, expected, strict=True))
    return {
        f"{task}_{name}": summarize(f"{task}_{name}", [score(p, e) for p, e in pairs], True)
        for name, score in scores.items()
    }


def metric_from_dict(name: str, values: dict[str, Any]) -> Metric:
    """The ``Metric`` that :func:`metric_to_dict` wrote (as in metrics.json)."""
    return Metric(
        name=name,
        value=float(values["value"]),
        n=int(values["n"]),
        ci_low=values.get("ci_low"),
        ci_high=values.get("ci_high"),
        higher_is_better=bool(values["higher_is_better"]),
    )


def metric_to_dict(metric: Metric) -> dict[str, Any]:
    return {
        "value": metric.value,
        "n": metric.n,
        "ci_low": metric.ci_low,
        "ci_high": metric.ci_high,
        "higher_is_better": metric.higher_is_better,
    }
