"""stats.json and report.md for the clean stage: what was kept, what was dropped and why."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from repotune.records import Kind
from repotune.wording import counted

# A rough, tokenizer-free estimate for code and English prose (BPE tokenizers of code models land
# between 3 and 4.5 characters per token); the train stage counts real tokens.
CHARS_PER_TOKEN = 4.0
LARGEST = 10


def estimate_tokens(chars: int) -> int:
    return round(chars / CHARS_PER_TOKEN)


@dataclass
class Summary:
    records: Counter[tuple[str, str]] = field(default_factory=Counter)
    chars: Counter[tuple[str, str]] = field(default_factory=Counter)
    languages: Counter[str] = field(default_factory=Counter)
    language_chars: Counter[str] = field(default_factory=Counter)
    largest: list[tuple[int, str, str]] = field(default_factory=list)
    sources: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Records kept per (split, source)."""

    def add(
        self,
        split: str,
        kind: Kind,
        language: str | None,
        path: str | None,
        chars: int,
        source: str | None = None,
    ) -> None:
        self.records[(split, str(kind))] += 1
        if source is not None:
            self.sources[(split, source)] += 1
        self.chars[(split, str(kind))] += chars
        if path is not None:
            lang = language or "unknown"
            self.languages[lang] += 1
            self.language_chars[lang] += chars
            entry = (chars, path, split)
            if len(self.largest) < LARGEST:
                heapq.heappush(self.largest, entry)
            else:
                heapq.heappushpop(self.largest, entry)

    def _by_source(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "eval": 0})
        for (split, source), count in self.sources.items():
            found[source][split] += count
        return dict(sorted(found.items()))

    def as_stats(
        self, *, input_count: int, dropped: Counter[str], redactions: Counter[str]
    ) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "eval": 0, "chars": 0})
        for (split, kind), count in self.records.items():
            by_kind[kind][split] += count
            by_kind[kind]["chars"] += self.chars[(split, kind)]
        for entry in by_kind.values():
            entry["tokens_estimate"] = estimate_tokens(entry["chars"])
        split_chars = Counter()
        for (split, _), chars in self.chars.items():
            split_chars[split] += chars
        kept = {
            split: sum(n for (s, _), n in self.records.items() if s == split) for split in ("train", "eval")
        }
        return {
            "input_records": input_count,
            "kept": {**kept, "total": sum(kept.values())},
            "dropped": dict(dropped.most_common()),
            "redactions": dict(redactions.most_common()),
            "by_kind": dict(sorted(by_kind.items())),
            "by_source": self._by_source(),
            "by_language": {
                lang: {"files": n, "chars": self.language_chars[lang]}
                for lang, n in self.languages.most_common()
            },
            "tokens_estimate": {split: estimate_tokens(split_chars[split]) for split in ("train", "eval")},
            "largest_files": [
                {"file_path": path, "chars": chars, "split": split}
                for chars, path, split in sorted(self.largest, reverse=True)
            ],
        }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _split_section(split: dict[str, Any] | None) -> list[str]:
    if not split:
        return []
    if split["mode"] == "temporal":
        cut, rule = split["cut"], split.get("rule") or "as given"
        head = (
            f"**Temporal split** at `{cut['commit'][:12]}` ({cut['date']}), {rule}: the model trains on "
            "the repository as it stood then and is scored on what came after."
        )
    else:
        head = f"**File split**: {split.get('reason') or 'as asked'}. Held-out files are chosen by path hash."
    lines = [
        "## Split",
        "",
        head,
        "",
        f"- Trained on: {split['trained_on']}",
        f"- Scored on: {split['scored_on']}",
    ]
    if split.get("dropped_hunks"):
        lines.append(
            f"- {split['dropped_hunks']} diff sections of held-out files were taken out of training commits "
            "(a commit left with no diff is dropped as `held_out_diff`)."
        )
    if split.get("dropped_comments"):
        lines.append(
            f"- {split['dropped_comments']} comments posted after the cut were taken out of training issues "
            "and pull requests opened before it."
        )
    return [*lines, ""]


def _leak_section(leaks: dict[str, Any] | None, mode: str | None) -> list[str]:
    if not leaks:
        return []
    found, total = leaks["found_in_training"], leaks["target_lines"]
    targets = "lines added after the cut" if mode == "temporal" else "lines of held-out files"
    lines = [
        "## Leak audit",
        "",
        f"**{found}** of {total:,} {targets} (of at least {leaks['min_chars']} characters) also appear in "
        "training" + (":" if found else "."),
    ]
    if found:
        by_kind = ", ".join(f"{n} in {kind} records" for kind, n in leaks["found_by_kind"].items())
        lines[-1] += f" {by_kind}."
        if mode == "temporal":
            why = (
                "Training reads nothing after the cut, so these lines stood in the repository at the cut "
                "already (moved, copied or restored code)"
            )
        else:
            why = (
                "Diffs of held-out files are out of training commits, so these lines reach training through "
                "another path (a file's old path before a move, a copy, a common line)"
            )
        if leaks.get("set_aside"):
            why += f": {leaks['set_aside']} are set aside in `seen_lines`, not to be scored"
        lines += ["", why + "."]
        lines += [
            "",
            _table(
                ["held-out file", "target lines", "found in training"],
                [[f"`{f['file_path']}`", f["target_lines"], f["found"]] for f in leaks["files"]],
            ),
        ]
    lines += ["", f"Scored lines found in training: **{leaks['scored_in_training']}**."]
    return [*lines, ""]


def _source_section(stats: dict[str, Any]) -> list[str]:
    """Records kept per source, when the dataset has more than one (a repository, its wiki, ...)."""
    by_source = stats.get("by_source") or {}
    if len(by_source) < 2:
        return []
    rows = [[f"`{name}`", n["train"], n["eval"]] for name, n in by_source.items()]
    return ["## By source", "", _table(["source", "train", "eval"], rows), ""]


def render(stats: dict[str, Any]) -> str:
    """The human-readable clean report, in Markdown."""
    source = stats.get("source") or {}
    kept, dropped, redactions = stats["kept"], stats["dropped"], stats["redactions"]
    commit = source.get("commit")
    parts = [
        "# repotune clean report",
        "",
        f"Source: `{source.get('source')}`" + (f" at `{commit[:12]}`" if commit else ""),
        "",
        f"**{kept['total']}** of {stats['input_records']} records kept: {kept['train']} train, "
        f"{kept['eval']} eval; {sum(dropped.values())} dropped; "
        f"{counted(sum(redactions.values()), 'secret')} redacted. "
        f"About {stats['tokens_estimate']['train']:,} training tokens and "
        f"{stats['tokens_estimate']['eval']:,} held-out tokens (estimated at {CHARS_PER_TOKEN:g} characters "
        "a token).",
        "",
        *_split_section(stats.get("split")),
        *_leak_section(stats.get("leak_audit"), (stats.get("split") or {}).get("mode")),
        *_source_section(stats),
        "## By kind",
        "",
        _table(
            ["kind", "train", "eval", "characters", "≈ tokens"],
            [
                [k, v["train"], v["eval"], f"{v['chars']:,}", f"{v['tokens_estimate']:,}"]
                for k, v in stats["by_kind"].items()
            ],
        ),
        "",
        "## Dropped, by reason",
        "",
        _table(["reason", "records"], [[r, n] for r, n in dropped.items()])
        if dropped
        else "Nothing dropped.",
        "",
        "## Secrets redacted, by kind",
        "",
        _table(["kind", "redactions"], [[k, n] for k, n in redactions.items()])
        if redactions
        else "No secrets found.",
        "",
    ]
    skipped = stats.get("ingest_skipped") or {}
    if skipped:
        parts += [
            "## Skipped at ingest, by reason",
            "",
            _table(["reason", "entries"], [[r, n] for r, n in sorted(skipped.items(), key=lambda x: -x[1])]),
            "",
        ]
    if stats["by_language"]:
        parts += [
            "## Files by language",
            "",
            _table(
                ["language", "files", "characters"],
                [
                    [lang, v["files"], f"{v['chars']:,}"]
                    for lang, v in list(stats["by_language"].items())[:20]
                ],
            ),
            "",
        ]
    if stats["largest_files"]:
        parts += [
            "## Largest files kept",
            "",
            _table(
                ["file", "characters", "split"],
                [[f"`{f['file_path']}`", f"{f['chars']:,}", f["split"]] for f in stats["largest_files"]],
            ),
            "",
        ]
    return "\n".join(parts).rstrip("\n") + "\n"
