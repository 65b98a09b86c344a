"""Evaluate on tiny models trained for real: every metric scored, reports written, the registry moves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import git, write_tree
from tests.test_train import PROJECT, TINY

from repotune import clean, evaluate, ingest
from repotune.clean import CleanConfig
from repotune.clean.split import SplitConfig
from repotune.data.transforms import code_prompt, fim_prompt
from repotune.decoding import LINE_REPEAT_PENALTY
from repotune.errors import RepotuneError
from repotune.evaluate import EvaluateConfig, EvaluateResult, Policy, ScoringConfig
from repotune.evaluate.arms import Arm
from repotune.ingest import IngestConfig
from repotune.train.finetune import run_training
from repotune.train.recipe import load_recipe

# Small samples, short blocks: enough examples (>= 20) for confidence intervals, seconds per model.
QUICK = ScoringConfig(
    seq_len=32, max_blocks=48, line_samples=20, fim_samples=20, max_new_tokens=8, forgetting_files=3
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A cleaned project with enough held out (30% of files, newest commits) to score with CIs."""
    root = tmp_path_factory.mktemp("eval-project")
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    for day, (path, text) in enumerate(sorted(PROJECT.items()), start=1):
        write_tree(repo, {path: text})
        git(repo, "add", "--all")
        git(
            repo,
            "commit",
            "-qm",
            f"Add {path}\n\nPrices for module {day}.",
            date=f"2024-01-{day:02d}T00:00:00+00:00",
        )
    ingest.run(IngestConfig(source=str(repo), output=root / "ingest"))
    clean.run(
        CleanConfig(
            input=root / "ingest", output=root / "clean", split=SplitConfig(eval_fraction=0.3), workers=1
        )
    )
    return root / "clean"


def _train(project: Path, out: Path, steps: int) -> Path:
    run_training(
        project, out, load_recipe(TINY, {"max_steps": steps, "save_every_steps": 1000}), log=lambda _: None
    )
    return out


@pytest.fixture(scope="module")
def trained(project: Path, tmp_path_factory) -> Path:
    return _train(project, tmp_path_factory.mktemp("models") / "m20", 20)


def evaluate_model(model: Path, data: Path, output: Path, **settings) -> EvaluateResult:
    log = settings.pop("log", lambda _: None)
    return evaluate.run(EvaluateConfig(model=model, data=data, output=output, **settings), log=log)


ARMS = {"base", "base_retrieval", "candidate", "candidate_retrieval"}


@pytest.mark.integration
def test_four_arms_answer_the_same_samples_and_the_reports_show_them(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    result = evaluate_model(trained, project, tmp_path / "eval", scoring=QUICK, log=lines.append)
    assert set(result.models) == ARMS
    base, candidate = result.models["base"], result.models["candidate"]
    for name in ("perplexity", "forgetting_perplexity", "line_exact_match", "line_edit_similarity",
                 "line_diff_marker_share", "line_repeats_line_above_share", "commit_rouge_l",
                 "commit_chrf"):  # fmt: skip
        assert name in base and name in candidate, name
    for key in ARMS:  # every arm answered the same 20 lines
        assert result.models[key]["line_edit_similarity"].n == 20, key
    # Retrieval arms answer completions; perplexity and commits are the model's, scored without context.
    assert "perplexity" not in result.models["candidate_retrieval"]
    # FIM prompts only for a model that has FIM tokens: the trained one, not the base. The candidate fills
    # the spans both ways; its retrieval arm the way it did better, as it is served.
    fim, alone = "fim_edit_similarity", "fim_prefix_only_edit_similarity"
    assert fim in candidate and alone in candidate and fim not in base and alone in base
    served = fim if result.decision.fim else alone
    assert {fim, alone} & set(result.models["candidate_retrieval"]) == {served}
    assert candidate["perplexity"].n >= 20 and candidate["perplexity"].ci_low is not None
    assert candidate["perplexity"].value < base["perplexity"].value  # it learned the project
    # The two read the same windows as the same tokens (the candidate's FIM tokens change nothing).
    for name in ("perplexity", "forgetting_perplexity"):
        assert candidate[name].tokens is not None and candidate[name].tokens == base[name].tokens, name
    assert candidate["perplexity"].tokens != candidate["forgetting_perplexity"].tokens
    assert result.decision.reference == Arm("base", True)  # no champion: what the team already has
    assert result.arm in (Arm("candidate"), Arm("candidate", True))
    # Progress for every arm, as it goes: what it asks, and its completions (an arm's tasks share
    # decoding batches).
    commits = base["commit_chrf"].n
    for task in (
        f"base: 20 lines, 20 FIM spans from the prefix alone, {commits} commit subjects",
        f"candidate: 20 lines, 20 FIM spans from the prefix alone, 20 FIM spans with their suffix, {commits}",
        f"base: completions: {40 + commits}/{40 + commits}",
        "candidate: perplexity of held-out code:",
        # 40 new prompts: every retrieval prompt differs from its plain one (none reused).
        "base + retrieval: completions: 40/40",
    ):
        assert any(task in line for line in lines), task

    report = (tmp_path / "eval" / "report.md").read_text()
    assert report.splitlines()[2].startswith(("**Promoted: candidate", "**Not promoted.**"))
    assert "tokens of context (the file being completed searched too)" in report
    assert (
        "| arm | line exact match | line edit similarity | FIM exact match | FIM edit similarity |" in report
    )
    for label in ("| base |", "| base + retrieval (reference) |", "| candidate", "| candidate + retrieval"):
        assert label in report, label
    assert "File split" in report and "scored on held-out files, which training never saw" in report
    assert "decoded greedily with a line repeat penalty of 1, as `repotune serve` decodes" in report
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count('<g class="bar" data-arm="candidate_retrieval">') >= 5
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["decision"]["promote"] is result.decision.promote
    assert saved["decision"]["arm"] == result.arm.key and saved["decision"]["reference"] == "base_retrieval"
    assert set(saved["paired"]) == {"candidate", "candidate_retrieval"}
    completions = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").open()]
    commits = base["commit_chrf"].n
    assert commits > 0
    assert [c["task"] for c in completions] == (
        ["line"] * 20 + ["fim"] * 20 + ["fim_prefix_only"] * 20 + ["commit"] * commits
    )
    assert set(completions[0]["answers"]) == ARMS
    # the commit subjects scored (commit_chrf, commit_rouge_l) are there too, each model's answer beside
    # the subject written, so a score of 0.00 can be looked at
    for row in completions[-commits:]:
        assert row["path"] is None and row["expected"].strip()
        assert set(row["answers"]) == {"base", "candidate"}
    # FIM prompts need FIM tokens (the candidate's); the arms without retrieval answer the same gaps from
    # the prefix alone too, and the candidate's retrieval arm only the way its model did better
    with_fim = saved["decision"]["fim"]
    assert isinstance(with_fim, bool) and with_fim is result.decision.fim
    assert set(completions[20]["answers"]) == {"candidate"} | ({"candidate_retrieval"} if with_fim else set())
    assert set(completions[59]["answers"]) == ARMS - ({"candidate_retrieval"} if with_fim else set())
    assert [c["expected"] for c in completions[20:40]] == [c["expected"] for c in completions[40:60]]
    assert saved["context"]["samples_with_context"]["lines"] > 10  # retrieval arms had context to use
    assert saved["context"]["retrieval_current_file"] is True  # the report says how it searched
    # the completions each format check counted are in the context, as many as its share says
    for check in ("line_diff_marker_share", "line_repeats_line_above_share"):
        for key in ARMS:
            share = result.models[key][check]
            flagged = saved["context"]["flagged"].get(check, {}).get(key, {"count": 0})
            assert flagged["count"] == round(share.value * share.n), (check, key)
    # Each line answer's confidence, and what showing only the confident ones would have shown: at full
    # coverage, every answer, so the arm's own line scores.
    assert all(set(row["confidence"]) == ARMS for row in completions[:20])
    assert all(0 <= value <= 1 for row in completions[:20] for value in row["confidence"].values())
    assert "confidence" not in completions[20]  # FIM spans: none
    summary = saved["context"]["confidence"]
    assert set(summary) == ARMS
    for key in ARMS:
        whole, half, quarter = summary[key]["shown"]
        assert whole["shown"] == 1.0 and whole["threshold"] == min(
            r["confidence"][key] for r in completions[:20]
        )
        assert whole["line_edit_similarity"] == pytest.approx(
            result.models[key]["line_edit_similarity"].value
        )
        assert half["shown"] >= 0.5 and quarter["shown"] >= 0.25  # more where answers tie at a threshold
        assert quarter["threshold"] >= half["threshold"] >= whole["threshold"]
    assert "## Showing only confident completions" in report and "| candidate + retrieval | " in report
    assert "<h2>Showing only confident completions</h2>" in page
    assert EvaluateResult.load(tmp_path / "eval") == result  # what metrics.json says is what was returned


def _generated_line(scorer, prompt: str, max_new_tokens: int, line_penalty: float = 0.0) -> str:
    """The first non-blank line `model.generate` writes for ``prompt`` alone, greedily: the reference
    evaluation's own decoding must agree with. The file header's token suppressed and, with
    ``line_penalty``, through the logits processor, as ``repotune serve`` decodes."""
    import torch
    from transformers import LogitsProcessorList

    from repotune.decoding import LinePenaltyProcessor, newline_tokens, stop_token_ids, suppressed_token_ids
    from repotune.evaluate.generate import answer_line, prompt_ids

    ids, after_newline = prompt_ids(prompt, scorer.tokenizer, 2048)
    eos = sorted(stop_token_ids(scorer.model, scorer.tokenizer))
    served = LinePenaltyProcessor([line_penalty], [len(ids)], newline_tokens(scorer.tokenizer))
    with torch.no_grad():
        out = scorer.model.generate(
            torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
            logits_processor=LogitsProcessorList([served] if line_penalty else []),
            suppress_tokens=suppressed_token_ids(scorer.tokenizer, eos) or None,
        )  # fmt: skip
    tokens = out[0, len(ids) :].tolist()
    tokens = tokens[: min([tokens.index(t) for t in eos if t in tokens], default=len(tokens))]
    return answer_line(scorer.tokenizer.decode(tokens, skip_special_tokens=True), after_newline=after_newline)


@pytest.mark.integration
def test_batched_completions_and_perplexity_equal_one_at_a_time(project: Path, trained: Path) -> None:
    from repotune.decoding import rewrites_line_above
    from repotune.evaluate.generate import (
        KEPT_PROMPTS,
        PREFIX_MIN_TOKENS,
        complete_lines,
        tokenized,
        window_nll,
        windows,
    )
    from repotune.evaluate.samples import draw_samples
    from repotune.evaluate.score import Scorer, retrieval_contexts
    from repotune.evaluate.stage import retrieval_index
    from repotune.kvcache import PrefixCache
    from repotune.records import read_records

    config = ScoringConfig(line_samples=6, fim_samples=4, forgetting_files=0, max_new_tokens=12)
    samples = draw_samples(list(read_records(project / "eval.jsonl")), config)
    scorer = Scorer(trained, config)
    index = retrieval_index(EvaluateConfig(model=trained, data=project, output=project), lambda _: None)
    contexts = retrieval_contexts(index, samples, scorer.tokenizer, 512)
    assert any(contexts.lines)
    prompts = [code_prompt(s.prefix, path=s.path, tokenizer=scorer.tokenizer) for s in samples.lines]
    prompts += [code_prompt(s.prefix, path=s.path, tokenizer=scorer.tokenizer, context=c)
                for s, c in zip(samples.lines, contexts.lines, strict=True)]  # fmt: skip
    prompts += [fim_prompt(s.prefix, s.suffix, path=s.path, tokenizer=scorer.tokenizer) for s in samples.fims]
    prompts += ["def price_3_4(order", "    return round(total"]  # prompts of very different lengths
    # Cut mid-line, with and without context: the tiny model, which finishes no line of its own in 12
    # tokens (so the answers above are empty), writes the rest of these, and they must agree token for
    # token, not just be equally empty.
    mid_line = [
        code_prompt(s.prefix + s.expected[: len(s.expected) // 2], path=s.path, tokenizer=scorer.tokenizer,
                    context=context)
        for s, found in zip(samples.lines, contexts.lines, strict=True)
        for context in ("", found)
    ]  # fmt: skip
    prompts += mid_line
    one = complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=1, max_new_tokens=12)
    batched = complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=5, max_new_tokens=12)
    assert batched == one
    assert all(c.text.strip() for c in one[-len(mid_line) :])  # real answers, not empty ones
    # The same tokens, the same confidence, up to the rounding of the matrix products.
    assert [c.confidence for c in batched] == pytest.approx([c.confidence for c in one], rel=1e-4)
    assert all(0 < c.confidence <= 1 for c in one[-len(mid_line) :])
    # Each prompt read from the cache of an earlier one that starts alike (a mid-line prompt starts as
    # its line's prompt does; the scorer keeps such caches on a CPU): the same answers.
    kept = PrefixCache(scorer.model, PREFIX_MIN_TOKENS, entries=KEPT_PROMPTS)
    reusing = complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=5, max_new_tokens=12,
                             prefixes=kept)  # fmt: skip
    assert reusing == one
    assert [c.confidence for c in reusing] == pytest.approx([c.confidence for c in one], rel=1e-4)
    assert kept.hits >= len(mid_line) // 2 and kept.reused_tokens > 0
    assert isinstance(scorer.prefixes, PrefixCache)
    # Read together, left-padded (the path off a CPU), the prompts get the same answers; and both are
    # what transformers' own `generate` writes for each prompt alone.
    padded = complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=5, max_new_tokens=12,
                            prefill_alone=False)  # fmt: skip
    assert padded == one
    assert [c.text for c in one] == [_generated_line(scorer, p, 12) for p in prompts]
    # With the line repeat penalty (the stage's default), batched or not, the answers are the ones the
    # server's logits processor gives `generate`: what is scored is what is served.
    penalized = complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=5, max_new_tokens=12,
                               line_penalty=1.0)  # fmt: skip
    assert penalized == complete_lines(
        scorer.model, scorer.tokenizer, prompts, batch_size=1, max_new_tokens=12, line_penalty=1.0
    )
    assert [c.text for c in penalized] == [_generated_line(scorer, p, 12, line_penalty=1.0) for p in prompts]
    assert penalized != one  # the tiny model repeats itself within a line, and the penalty turns it
    assert scorer.config.line_repeat_penalty == LINE_REPEAT_PENALTY == 1.0
    # An answer that writes the line above again is decoded again from its least certain tokens. Judged
    # against itself as the line above, every answer of five characters or more is a copy: those that
    # another line replaced are neither blank nor a copy, the rest are the first answers, and batched
    # or not, with kept caches or not, they are the same (tests/test_serving.py: and what is served).
    befores = [c.text for c in penalized]
    again = complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=5, max_new_tokens=12,
                           line_penalty=1.0, befores=befores)  # fmt: skip
    assert sum(c.retried for c in again) >= len(prompts) // 4
    for first, second, before in zip(penalized, again, befores, strict=True):
        if second.retried:
            assert second.text.strip() and not rewrites_line_above(second.text, before)
        else:
            assert second == first
    kept = PrefixCache(scorer.model, PREFIX_MIN_TOKENS, entries=KEPT_PROMPTS)
    assert again == complete_lines(scorer.model, scorer.tokenizer, prompts, batch_size=1, max_new_tokens=12,
                                   line_penalty=1.0, befores=befores, prefixes=kept)  # fmt: skip

    tokens = tokenized(samples.perplexity, scorer.tokenizer)
    chosen = windows(tokens, 48, 12, seed=0)
    alone = window_nll(scorer.model, tokens, chosen, batch_size=1)
    together = window_nll(scorer.model, tokens, chosen, batch_size=7)
    assert [t for _, t in together] == [t for _, t in alone]
    assert [n for n, _ in together] == pytest.approx([n for n, _ in alone], rel=1e-5)
    # Logits only at the scored positions give what the full output layer gives.
    import repotune.evaluate.generate as generate

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate, "keeps_logits", lambda model: False)
        full = window_nll(scorer.model, tokens, chosen, batch_size=7)
    assert generate.keeps_logits(scorer.model)
    assert [t for _, t in full] == [t for _, t in together]
    assert [n for n, _ in full] == pytest.approx([n for n, _ in together], rel=1e-5)


def future_data(root: Path) -> tuple[Path, list[str]]:
    """A clean folder as the temporal split writes it: train.jsonl holds the files as of the cut, eval.jsonl
    the same files at the end revision with the line ranges added after the cut; returns the added lines."""
    from repotune.records import Kind, Record, write_records

    train, future, added_text = [], [], []
    for i in range(6):
        path = f"src/shop/module_{i}.py"
        old = PROJECT[path]
        new_lines = [
            f"def refund_{i}_{j}(order, fee={j}):\n    paid = sum(item.cost for item in order.items)\n"
            f"    return round(paid - fee, 2)\n"
            for j in range(4)
        ]
        content = old + "\n" + "".join(new_lines)
        first = len(old.split("\n")) + 1
        last = len(content.rstrip("\n").split("\n"))
        added_text += content.split("\n")[first - 1 : last]
        train.append(
            Record(content=old, kind=Kind.CODE, source="t", id=f"o{i}", file_path=path, revision="c0")
        )
        meta = {"added_lines": [[first, last]], "cut": "c0ffee"}
        future.append(
            Record(
                content=content,
                kind=Kind.CODE,
                source="t",
                id=f"n{i}",
                file_path=path,
                revision="c9",
                meta=meta,
            )
        )
    folder = root / "future-clean"
    folder.mkdir()
    with (folder / "train.jsonl").open("w") as handle:
        write_records(handle, train)
    with (folder / "eval.jsonl").open("w") as handle:
        write_records(handle, future)
    # The shape repotune.clean.split.SplitSummary writes.
    split = {"mode": "temporal", "cut": {"commit": "c0ffee", "date": "2024-01-09T00:00:00+00:00"},
             "trained_on": "the repository at c0ffee", "scored_on": "24 lines added after c0ffee",
             "reason": None, "rule": "revision c0ffee"}  # fmt: skip
    (folder / "stats.json").write_text(json.dumps({"split": split}))
    return folder, [line for line in added_text if line.strip()]


@pytest.mark.integration
def test_temporal_data_is_scored_on_added_lines_with_an_index_of_the_past(
    trained: Path, tmp_path: Path
) -> None:
    from repotune.evaluate.stage import retrieval_index

    data, added = future_data(tmp_path)
    # The index holds what training saw and nothing added after the cut.
    config = EvaluateConfig(model=trained, data=data, output=tmp_path / "eval", scoring=QUICK)
    retrieval_index(config, lambda _: None).save(tmp_path / "index")
    indexed = [json.loads(line)["content"] for line in (tmp_path / "index" / "files.jsonl").open()]
    assert indexed and not any(line in text for line in added for text in indexed)

    result = evaluate.run(config, log=lambda _: None)
    assert result.split["mode"] == "temporal"
    completions = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").open()]
    assert completions and all(
        c["expected"].strip() and c["expected"] in "\n".join(added) for c in completions
    )
    assert {c["expected"] for c in completions if c["task"] == "line"} <= set(added)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Temporal split at `c0ffee` (2024-01-09), revision c0ffee: scored on code added after" in report
    assert "Trained on the repository at c0ffee; scored on 24 lines added after c0ffee." in report
    assert "perplexity of added code" in report
    # Perplexity counts the added lines' tokens only: fewer windows score a token than the whole files
    # would give (the stage then draws max_blocks of them).
    from transformers import AutoTokenizer

    from repotune.evaluate.generate import tokenized, windows
    from repotune.evaluate.samples import ScoredText, draw_samples
    from repotune.records import read_records

    texts = draw_samples(list(read_records(data / "eval.jsonl")), QUICK).perplexity
    tokenizer = AutoTokenizer.from_pretrained(trained)
    whole = [ScoredText(t.path, t.text, None) for t in texts]
    added_only = len(windows(tokenized(texts, tokenizer), QUICK.seq_len, 10**6, 0))
    assert 0 < added_only < len(windows(tokenized(whole, tokenizer), QUICK.seq_len, 10**6, 0))
    assert result.models["candidate"]["perplexity"].n == min(added_only, QUICK.max_blocks)


@pytest.mark.integration
def test_the_held_out_loss_of_a_temporal_split_is_taken_on_the_added_lines(tmp_path: Path) -> None:
    # The files at the end revision are mostly what training saw at the cut: only their added lines
    # (one run in each of the six files) are held out.
    from transformers import AutoTokenizer

    from repotune.records import read_records

    data, added = future_data(tmp_path)
    recipe = load_recipe(TINY, {"max_steps": 1, "data.max_eval_blocks": None})
    summary = run_training(data, tmp_path / "model", recipe, log=lambda _: None)
    assert summary["data"]["eval_records"] == 6
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    files = sum(len(tokenizer(r.content).input_ids) for r in read_records(data / "eval.jsonl"))
    lines = sum(len(tokenizer(line + "\n").input_ids) for line in added)
    held_out = summary["data"]["eval_blocks"] * recipe.data.seq_len
    assert lines <= held_out < files / 2  # whole files would make over four times the blocks
    assert summary["eval_loss"] is not None and summary["base_eval_loss"] is not None
    card = (tmp_path / "model" / "README.md").read_text()
    assert "blocks of held-out text the model never saw (6 pieces: held-out files, or in a temporal" in card


@pytest.mark.integration
def test_the_index_of_a_file_split_holds_no_held_out_file(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    from repotune.evaluate.stage import retrieval_index
    from repotune.records import read_records

    held_out = [r for r in read_records(project / "eval.jsonl") if r.file_path]
    assert held_out
    retrieval_index(EvaluateConfig(model=trained, data=project, output=tmp_path), lambda _: None).save(
        tmp_path / "index"
    )
    files = [json.loads(line) for line in (tmp_path / "index" / "files.jsonl").open()]
    assert files and not {f["path"] for f in files} & {r.file_path for r in held_out}
    for record in held_out:  # each module's own function names are in its file alone
        if record.file_path.startswith("src/shop/module_"):
            number = record.file_path.removeprefix("src/shop/module_").removesuffix(".py")
            assert not any(f"def price_{number}_" in f["content"] for f in files)


@pytest.mark.integration
def test_base_arms_scored_apart_are_reused_only_for_what_they_were_scored_on(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    """The score-base step's saved arms give the evaluation the numbers it would have scored itself;
    other samples or settings are never mistaken for them."""
    from dataclasses import replace

    from repotune.evaluate import baseline
    from repotune.evaluate.stage import retrieval_index

    index = tmp_path / "index"
    retrieval_index(EvaluateConfig(model=trained, data=project, output=tmp_path), lambda _: None).save(index)
    summary = json.loads((trained / "train_summary.json").read_text())
    shown: list[str] = []
    saved = baseline.run(project, tmp_path / "base", summary["base_model"], scoring=QUICK,
                         recipe=summary["recipe"], index=index, log=shown.append)  # fmt: skip
    assert "base: completions: " in "\n".join(shown)
    shown.clear()  # asked again for the same: what is saved stands, and no model is run
    baseline.run(project, tmp_path / "base", summary["base_model"], scoring=QUICK, recipe=summary["recipe"],
                 index=index, log=shown.append)  # fmt: skip
    assert any("holds them already" in line for line in shown) and not any("scoring" in s for s in shown)
    assert baseline.summary(saved).startswith(f"{summary['base_model']}: line edit similarity base 0.")

    whole = evaluate_model(trained, project, tmp_path / "whole", scoring=QUICK, index=index)
    lines: list[str] = []
    reused = evaluate_model(trained, project, tmp_path / "reused", scoring=replace(QUICK, batch_size=3),
                            index=index, base_scores=tmp_path / "base", log=lines.append)  # fmt: skip
    assert any(line.startswith("base arms: reused from ") for line in lines)
    assert not any("base: completions" in line for line in lines)  # the base model was not run
    assert reused.models == whole.models and reused.decision == whole.decision
    completions = [
        [json.loads(line) for line in (tmp_path / name / "completions.jsonl").open()]
        for name in ("whole", "reused")
    ]
    confidences = [[row.pop("confidence", None) for row in rows] for rows in completions]
    assert completions[0] == completions[1]
    # Other batches round other last digits of the candidate's probabilities; the base's are the saved ones.
    for whole_row, reused_row in zip(*confidences, strict=True):
        assert (whole_row is None) == (reused_row is None)
        if whole_row is not None:
            assert whole_row["base"] == reused_row["base"]
            assert whole_row == pytest.approx(reused_row, abs=1e-3)
    assert (
        f"(base arms reused from `{tmp_path / 'base'}`, scored there in "
        in (tmp_path / "reused" / "report.md").read_text()
    )
    # Every evaluation leaves the base arms it used behind: the next one on the same data takes them.
    assert (tmp_path / "whole" / "base_scores.json").is_file()
    assert (tmp_path / "reused" / "base_scores.json").read_text() == saved.read_text()
    lines.clear()
    again = evaluate_model(trained, project, tmp_path / "again", scoring=QUICK, index=index,
                           base_scores=tmp_path / "whole", log=lines.append)  # fmt: skip
    assert any(line.startswith(f"base arms: reused from {tmp_path / 'whole'}") for line in lines)
    assert again.models == whole.models

    # Other samples (one more line): the saved arms are not theirs, so the base is scored here.
    lines.clear()
    evaluate_model(trained, project, tmp_path / "other", scoring=replace(QUICK, line_samples=21), index=index,
                   base_scores=tmp_path / "base", log=lines.append)  # fmt: skip
    assert any(line.startswith("base arms: scored here, not reused: ") for line in lines)
    assert any("base: 21 lines, " in line for line in lines)
    assert baseline.load(tmp_path / "nothing", "key")[1].endswith("base_scores.json does not exist")


def test_bad_evaluation_input_is_named(project: Path, trained: Path, tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match=r"no eval\.jsonl"):
        evaluate_model(trained, tmp_path, tmp_path / "o", scoring=QUICK)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text("")
    with pytest.raises(RepotuneError, match="nothing held out"):
        evaluate_model(trained, tmp_path / "data", tmp_path / "o", scoring=QUICK)
    with pytest.raises(RepotuneError, match="holds no model"):
        evaluate_model(tmp_path, project, tmp_path / "o", scoring=QUICK)
    with pytest.raises(RepotuneError, match="does not exist"):  # a typo is not a folder without a model
        evaluate_model(tmp_path / "modle", project, tmp_path / "o", scoring=QUICK)
    # A model folder missing its weights or its tokenizer fails before the base model is scored.
    lines: list[str] = []
    for missing, message in (("model.safetensors", "has no model weights"), ("tokenizer.json", "tokenizer")):
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(trained, broken, ignore=shutil.ignore_patterns("checkpoints", ".token-cache"))
        (broken / missing).unlink()
        with pytest.raises(RepotuneError, match=message):
            evaluate_model(broken, project, tmp_path / "o", scoring=QUICK, log=lines.append)
    assert not any("scoring" in line for line in lines), lines
    # Held-out data of another project (another first commit) is refused; a dataset of the same
    # project that the model was not trained on is scored with a note.
    other = tmp_path / "other"
    shutil.copytree(project, other)
    stats = json.loads((other / "stats.json").read_text())
    stats["source"]["root_commit"] = "f" * 40
    (other / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(RepotuneError, match="trained on another project"):
        evaluate_model(trained, other, tmp_path / "o", scoring=QUICK)
    from repotune.evaluate.stage import _check_same_data

    stats["source"]["root_commit"] = json.loads((project / "stats.json").read_text())["source"]["root_commit"]
    (other / "stats.json").write_text(json.dumps(stats))
    (other / "eval.jsonl").write_text((other / "eval.jsonl").read_text().splitlines(keepends=True)[0])
    summary = json.loads((trained / "train_summary.json").read_text())
    notes: list[str] = []
    _check_same_data(trained, summary, other, notes.append)
    assert len(notes) == 1 and "is not the dataset" in notes[0]
    _check_same_data(trained, summary, project, notes.append)
    assert len(notes) == 1  # its own dataset: nothing to say


@pytest.mark.integration
def test_an_unreachable_registry_fails_and_decides_nothing(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    from tests.mlflow_server import free_port

    with pytest.raises(RepotuneError, match=r"127\.0\.0\.1"):
        evaluate_model(
            trained, project, tmp_path / "o", scoring=QUICK, tracking_uri=f"http://127.0.0.1:{free_port()}"
        )
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.slow
def test_the_better_run_becomes_champion_and_a_worse_one_does_not(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    from tests.mlflow_server import running_mlflow_on_s3
    from tests.s3_server import running_s3_server, s3_environment

    from repotune.evaluate.registry import ARM_TAG, DECISION_TAG, RETRIEVAL_TAG, Registry
    from repotune.storage import client_from_env

    # Tiny models write poor lines: decide on perplexity, which 60 steps of training clearly lower.
    policy = Policy(primary="perplexity", require_significance=False, max_forgetting_regression=None,
                    max_marker_share_increase=None, secondary=())  # fmt: skip
    better = _train(project, tmp_path / "m60", 60)
    worse = _train(project, tmp_path / "m2", 2)
    with running_s3_server() as endpoint:
        with s3_environment(endpoint):
            client_from_env().make_bucket("models")
        with running_mlflow_on_s3(tmp_path / "mlflow", endpoint, "s3://models/mlflow") as url:

            def evaluate(model: Path, name: str) -> EvaluateResult:
                return evaluate_model(
                    model,
                    project,
                    tmp_path / name,
                    scoring=QUICK,
                    policy=policy,
                    tracking_uri=url,
                    log=lambda _: None,
                )

            first = evaluate(trained, "e1")
            assert first.decision.promote, first.decision.reasons
            second = evaluate(better, "e2")
            assert "champion" in second.models  # the champion was scored on the same samples
            assert second.decision.promote, second.decision.reasons
            third = evaluate(worse, "e3")
            assert not third.decision.promote

            registry = Registry(url, "repotune")
            champion = registry.champion()
            assert champion.version == second.registered_version
            # The arm deployed, for deploy and serving to read: with retrieval or not.
            assert champion.tags[ARM_TAG] == second.arm.key
            assert champion.tags[RETRIEVAL_TAG] == str(second.arm.retrieval).lower()
            assert [c.version for c in registry.history()] == [
                first.registered_version,
                second.registered_version,
            ]
            versions = {v.version for v in registry._client.search_model_versions("name='repotune'")}
            assert versions == {
                first.registered_version,
                second.registered_version,
                third.registered_version,
            }
            # The evaluation's own run: its settings as params, its verdict as tags (filterable in the
            # runs view), and a duration that spans the scoring, which ran before the run was opened.
            version = registry._client.get_model_version("repotune", third.registered_version)
            run = registry._client.get_run(version.run_id)
            assert run.data.params["scoring.line_samples"] == str(QUICK.line_samples)
            assert "policy.primary" in run.data.params
            assert run.data.tags[DECISION_TAG] == "reject" and run.data.tags[ARM_TAG] == third.arm.key
            assert (run.info.end_time - run.info.start_time) / 1000 >= third.seconds


@pytest.mark.integration
def test_evaluate_from_the_command_line(project: Path, trained: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "evaluate", str(trained), str(project),
         "-o", str(tmp_path / "e"), "--line-samples", "4", "--fim-samples", "2", "--max-blocks", "8"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| arm | line exact match | line edit similarity |" in done.stderr
    assert "| base + retrieval (reference) |" in done.stderr
    assert (tmp_path / "e" / "report.html").is_file()
    # the same again, given the first evaluation's folder: its base arms are taken, not scored again
    quick = ["--line-samples", "4", "--fim-samples", "2", "--max-blocks", "8"]
    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "evaluate", str(trained), str(project),
         "-o", str(tmp_path / "f"), *quick, "--base-scores", str(tmp_path / "e")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"base arms: reused from {tmp_path / 'e'}" in done.stderr
    assert (
        json.loads((tmp_path / "f" / "metrics.json").read_text())["models"]
        == json.loads((tmp_path / "e" / "metrics.json").read_text())["models"]
    )
    # Settings without an option of their own (README: `--eval line_repeat_penalty=0`), after the options;
    # a misspelt one is refused with the key it was probably meant to be.
    command = [sys.executable, "-m", "repotune.cli", "evaluate", str(trained), str(project)]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "g"), *quick, "--no-retrieval", "--eval", "line_repeat_penalty=0",
         "--eval", "line_samples=3", "--eval", "policy.min_relative_gain=0.5"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert saved["config"]["line_repeat_penalty"] == 0 and saved["config"]["line_samples"] == 3
    assert saved["config"]["fim_samples"] == 2 and saved["config"]["retrieval"] is False
    assert saved["policy"]["min_relative_gain"] == 0.5
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "h"), "--eval", "line_repeat_penalti=0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2  # the CLI's exit status for a refused input
    assert "unknown key 'line_repeat_penalti' (did you mean 'line_repeat_penalty'?)" in done.stderr
