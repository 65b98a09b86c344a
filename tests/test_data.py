"""Records to training text (every transform, exactly) and token ids to packed blocks, on a tiny model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.tiny_tokenizer import make_tiny_tokenizer

from repotune.data.packing import (
    IGNORE_INDEX,
    PackedDataset,
    pack,
    padded_batches,
    recent_files,
    tokenize_records,
    tokens_by_kind,
    weighted_indices,
)
from repotune.data.transforms import (
    FIM_TOKENS,
    FimOrder,
    TransformConfig,
    code_text,
    commit_pair,
    commit_prompt,
    commit_text,
    doc_text,
    ensure_fim_tokens,
    example_text,
    file_header,
    fim_example,
    fim_prompt,
    fim_span_split,
    fim_split,
    fim_text,
    issue_messages,
    issue_text,
    record_rng,
    render_chat,
)
from repotune.errors import RepotuneError
from repotune.records import Kind, Record
from repotune.sources.github import thread_text

CODE = "def add(a, b):\n    return a + b\n"


def code_record(path: str = "src/x.py", content: str = CODE, rid: str = "c1") -> Record:
    return Record(content=content, kind=Kind.CODE, source="test", id=rid, file_path=path, language="python")


def commit_record(content: str) -> Record:
    return Record(content=content, kind=Kind.COMMIT, source="test", id="k1")


def thread_record() -> Record:
    """An issue in the layout the GitHub source writes, built by that source's own renderer."""
    item = {
        "number": 7,
        "title": "Crash on empty input",
        "state": "closed",
        "labels": [{"name": "bug"}],
        "user": {"login": "ada"},
        "created_at": "2024-01-01T10:00:00Z",
        "body": "It crashes.\n\nSteps: run it.",
    }
    comments = [
        {"user": {"login": "ada"}, "created_at": "2024-01-01T11:00:00Z", "body": "Also on 3.12."},
        {"user": {"login": "bob"}, "created_at": "2024-01-02T10:00:00Z", "body": "Fixed in #8."},
        {"user": {"login": "carol"}, "created_at": "2024-01-03T10:00:00Z", "body": "Released in 1.2."},
        {"user": {"login": "dan"}, "created_at": "2024-01-03T11:00:00Z", "body": ""},
        {"user": {"login": "ada"}, "created_at": "2024-01-04T10:00:00Z", "body": "Thanks!"},
    ]
    meta = {
        "number": 7,
        "title": "Crash on empty input",
        "state": "closed",
        "labels": ["bug"],
        "author": "ada",
    }
    return Record(
        content=thread_text(item, comments, is_pr=False),
        kind=Kind.ISSUE,
        source="github:o/r",
        id="i7",
        language="markdown",
        meta=meta,
    )


THREAD_MESSAGES = [
    {"role": "user", "content": "# Crash on empty input\n\nIt crashes.\n\nSteps: run it.\n\nAlso on 3.12."},
    {"role": "assistant", "content": "Fixed in #8.\n\nReleased in 1.2."},
    {"role": "user", "content": "Thanks!"},
]


@pytest.mark.parametrize(
    "kwargs,field",
    [({"fim_rate": 1.5}, "fim_rate"), ({"spm_rate": -0.1}, "spm_rate"), ({"seed": "1"}, "seed")],
)
def test_transform_config_names_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(RepotuneError, match=f"^{field} must be"):
        TransformConfig(**kwargs)


def test_file_header_uses_filename_token_only_where_the_tokenizer_has_it() -> None:
    tokenizer = make_tiny_tokenizer()
    assert file_header("src/x.py") == "# File: src/x.py\n"
    assert file_header("src/x.py", tokenizer) == "# File: src/x.py\n"
    assert file_header(None, tokenizer) == ""
    tokenizer.add_special_tokens({"extra_special_tokens": ["<filename>"]})
    assert file_header("src/x.py", tokenizer) == "<filename>src/x.py\n"


def test_code_and_doc_text() -> None:
    assert code_text(code_record()) == "# File: src/x.py\n" + CODE
    doc = Record(content="# Guide\n\nRead me.\n", kind=Kind.DOC, source="t", id="d", file_path="README.md")
    assert doc_text(doc) == "# File: README.md\n# Guide\n\nRead me.\n"


def test_fim_text_orders() -> None:
    assert fim_text("P", "M", "S", FimOrder.PSM) == "<fim_prefix>P<fim_suffix>S<fim_middle>M"
    assert fim_text("P", "M", "S", FimOrder.SPM) == "<fim_prefix><fim_suffix>S<fim_middle>PM"
    assert fim_prompt("P", "S") == "<fim_prefix>P<fim_suffix>S<fim_middle>"
    assert fim_prompt("P", "S", path="a.py") == "<fim_prefix># File: a.py\nP<fim_suffix>S<fim_middle>"
    assert fim_prompt("P", "S", order=FimOrder.SPM) == "<fim_prefix><fim_suffix>S<fim_middle>P"


def test_fim_split_recovers_the_text_for_any_cut() -> None:
    for seed in range(200):
        prefix, middle, suffix = fim_split(CODE, random.Random(seed))
        assert prefix + middle + suffix == CODE
    assert fim_split("", random.Random(0)) == ("", "", "")


def _parse_fim(text: str) -> tuple[FimOrder, str, str, str]:
    """(order, prefix, middle, suffix) back from a FIM example."""
    if text.startswith("<fim_prefix><fim_suffix>"):
        suffix, rest = text.removeprefix("<fim_prefix><fim_suffix>").split("<fim_middle>")
        return FimOrder.SPM, rest, "", suffix  # the prefix/middle boundary is not marked in SPM
    prefix, rest = text.removeprefix("<fim_prefix>").split("<fim_suffix>")
    suffix, middle = rest.split("<fim_middle>")
    return FimOrder.PSM, prefix, middle, suffix


def test_fim_example_psm_and_spm_keep_the_whole_file() -> None:
    header = "# File: src/x.py\n"
    for seed in range(50):
        psm = fim_example(code_record(), random.Random(seed), spm_rate=0.0)
        order, prefix, middle, suffix = _parse_fim(psm)
        assert order is FimOrder.PSM and prefix.startswith(header)
        assert prefix.removeprefix(header) + middle + suffix == CODE
        assert psm == fim_prompt(prefix.removeprefix(header), suffix, path="src/x.py") + middle

        spm = fim_example(code_record(), random.Random(seed), spm_rate=1.0)
        order, prefix_and_middle, _, suffix = _parse_fim(spm)
        assert order is FimOrder.SPM
        assert prefix_and_middle.startswith(header)
        assert prefix_and_middle.removeprefix(header) + suffix == CODE


def test_fim_rate_zero_never_one_always_and_the_seed_decides() -> None:
    tokenizer = make_tiny_tokenizer()
    records = [code_record(rid=f"r{i}") for i in range(40)]

    def texts(config: TransformConfig) -> list[str]:
        return [example_text(r, tokenizer, config, record_rng(r, config.seed)) for r in records]

    assert texts(TransformConfig(fim_rate=0.0)) == [code_text(r) for r in records]
    assert all(t.startswith("<fim_prefix>") for t in texts(TransformConfig(fim_rate=1.0)))
    assert all(
        t.startswith("<fim_prefix><fim_suffix>") for t in texts(TransformConfig(fim_rate=1.0, spm_rate=1.0))
    )
    assert not any(
        t.startswith("<fim_prefix><fim_suffix>") for t in texts(TransformConfig(fim_rate=1.0, spm_rate=0.0))
    )
    half = texts(TransformConfig(fim_rate=0.5, seed=3))
    assert 0 < sum(t.startswith("<fim_prefix>") for t in half) < len(records)
    assert texts(TransformConfig(fim_rate=0.5, seed=3)) == half
    assert texts(TransformConfig(fim_rate=0.5, seed=4)) != half


def test_commit_pair_and_text() -> None:
    diff = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-x = 1\n+x = 2"
    record = commit_record(f"Bump x\n\nx must be 2 since diff --git\nwas run.\n\n{diff}")
    assert commit_pair(record) == (diff, "Bump x\n\nx must be 2 since diff --git\nwas run.")
    assert (
        commit_text(record) == f"{diff}\n\nCommit message:\nBump x\n\nx must be 2 since diff --git\nwas run."
    )
    assert commit_text(record).startswith(commit_prompt(diff))

    empty = commit_record("Empty commit to trigger CI")
    assert commit_pair(empty) == ("", "Empty commit to trigger CI")
    assert commit_text(empty) == "Commit message:\nEmpty commit to trigger CI"


def test_issue_thread_becomes_alternating_messages() -> None:
    assert issue_messages(thread_record()) == THREAD_MESSAGES


def test_pull_request_review_comment_keeps_its_place() -> None:
    item = {"number": 8, "title": "Use b", "state": "open", "user": {"login": "ada"}, "body": None}
    review = {
        "user": {"login": "bob"},
        "created_at": "2024-01-02T00:00:00Z",
        "path": "src/x.py",
        "line": 3,
        "diff_hunk": "@@ -1,3 +1,3 @@\n-a\n+b",
        "body": "Why b?",
    }
    record = Record(
        content=thread_text(item, [review], is_pr=True), kind=Kind.PULL_REQUEST, source="g", id="p"
    )
    assert issue_messages(record) == [
        {"role": "user", "content": "# Use b"},
        {"role": "assistant", "content": "Review comment on src/x.py:3:\n\n```diff\n+b\n```\n\nWhy b?"},
    ]


def test_unknown_thread_layout_is_one_user_message() -> None:
    record = Record(content="Just some text\n", kind=Kind.ISSUE, source="s", id="x")
    assert issue_messages(record) == [{"role": "user", "content": "Just some text"}]


def test_issue_text_uses_the_chat_template_or_plain_turns() -> None:
    chat = issue_text(thread_record(), make_tiny_tokenizer(chat_template=True))
    assert chat == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in THREAD_MESSAGES)

    plain = issue_text(thread_record(), make_tiny_tokenizer())
    assert plain == (
        "User:\n# Crash on empty input\n\nIt crashes.\n\nSteps: run it.\n\nAlso on 3.12.\n\n"
        "Assistant:\nFixed in #8.\n\nReleased in 1.2.\n\nUser:\nThanks!"
    )
    question = [{"role": "user", "content": "Why?"}]
    assert render_chat(question, make_tiny_tokenizer(), add_generation_prompt=True) == (
        "User:\nWhy?\n\nAssistant:\n"
    )
    assert render_chat(question, make_tiny_tokenizer(chat_template=True), add_generation_prompt=True) == (
        "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_ensure_fim_tokens_adds_once_and_tokens_stay_whole() -> None:
    tokenizer = make_tiny_tokenizer()
    before = len(tokenizer)
    ids = ensure_fim_tokens(tokenizer)
    assert len(tokenizer) == before + 3
    assert ids == [tokenizer.convert_tokens_to_ids(t) for t in FIM_TOKENS] and len(set(ids)) == 3
    assert ensure_fim_tokens(tokenizer) == ids and len(tokenizer) == before + 3
    encoded = tokenizer.encode(fim_text("a", "b", "c"), add_special_tokens=False)
    assert [ids[0], ids[2], ids[1]] == [t for t in encoded if t in ids]


def test_a_tokenizer_with_fim_tokens_of_its_own_fills_with_them() -> None:
    """Qwen2.5-Coder was pretrained on ``<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>``: training,
    evaluation and serving use those tokens, nothing is added, and no embedding row starts untrained."""
    from repotune.data.transforms import fim_tokens, has_fim_tokens, split_fim_prompt

    qwen = make_tiny_tokenizer()
    native = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    qwen.add_special_tokens({"additional_special_tokens": native})
    before = len(qwen)
    assert has_fim_tokens(qwen) and fim_tokens(qwen).names == tuple(native)
    assert ensure_fim_tokens(qwen) == [qwen.convert_tokens_to_ids(t) for t in native] and len(qwen) == before
    assert (
        fim_prompt("def f(", "):\n", tokenizer=qwen) == "<|fim_prefix|>def f(<|fim_suffix|>):\n<|fim_middle|>"
    )
    record = Record(
        id="a", kind=Kind.CODE, source="repo", content="def f(x):\n    return x\n", file_path="a.py"
    )
    example = fim_example(record, random.Random(0), spm_rate=0.0, tokenizer=qwen)
    assert example.startswith("<|fim_prefix|>") and "<fim_prefix>" not in example
    # a tokenizer with none gets StarCoder's, as before
    plain = make_tiny_tokenizer()
    assert not has_fim_tokens(plain) and fim_tokens(plain).names == FIM_TOKENS
    assert fim_prompt("a", "c", tokenizer=plain) == fim_text("a", "", "c")
    # an editor's template in either family is read back into prefix and suffix
    for written in (fim_prompt("def f(", "):", tokenizer=qwen), fim_text("def f(", "", "):")):
        assert split_fim_prompt(written) == ("def f(", "):")
    assert split_fim_prompt("<|fim_prefix|>a<|fim_suffix|>b<|fim_suffix|>c<|fim_middle|>") is None
    assert split_fim_prompt("def f(") is None


class CountingTokenizer:
    """Delegates to a real tokenizer and counts encoding calls."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def mixed_records() -> list[Record]:
    return [
        code_record(rid="a"),
        Record(content="# Guide\n", kind=Kind.DOC, source="t", id="b", file_path="README.md"),
        commit_record("Fix\n\ndiff --git a/x b/x\n+x"),
        thread_record(),
    ]


def test_a_special_tokens_name_written_in_text_is_read_as_text(tmp_path: Path) -> None:
    """A FIM tool's own code writes its sentinels out: training, evaluation and serving read those as the
    characters they are (as the base model does), and the only sentinels are the ones rendering places."""
    from repotune.data.transforms import LITERAL, code_prompt, context_text, encode, literal

    base = make_tiny_tokenizer()
    base.add_special_tokens({"extra_special_tokens": ["<filename>"]})
    tokenizer = make_tiny_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": ["<filename>"]})
    sentinels = ensure_fim_tokens(tokenizer)
    header = tokenizer.convert_tokens_to_ids("<filename>")
    content = 'FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")\nname = "<filename>"\n'
    record = Record(id="a", kind=Kind.CODE, source="repo", content=content, file_path="src/fim.py")

    def as_text(text: str) -> list[int]:  # the ids the base model reads: nothing in ``text`` is markup
        return base(text, add_special_tokens=False, split_special_tokens=True).input_ids

    plain = code_text(record, tokenizer)
    assert plain.replace(LITERAL, "") == "<filename>src/fim.py\n" + content
    assert encode(tokenizer, plain) == [header, *as_text("src/fim.py\n" + content)]
    # The split cuts a written-out name in two now and then (in SPM the two halves meet again).
    for seed, spm in ((seed, spm) for seed in range(30) for spm in (0.0, 1.0)):
        example = fim_example(record, random.Random(seed), spm_rate=spm, tokenizer=tokenizer)
        ids = encode(tokenizer, example)
        assert sorted(i for i in ids if i in sentinels) == sorted(sentinels) and ids.count(header) == 1
    prompt = code_prompt(
        content, path="x.py", tokenizer=tokenizer, context=context_text([("y.py", content)], tokenizer)
    )
    assert encode(tokenizer, prompt).count(header) == 2 and not set(sentinels) & set(
        encode(tokenizer, prompt)
    )
    gap = encode(tokenizer, fim_prompt(content, content, path="x.py", tokenizer=tokenizer))
    assert [i for i in gap if i in sentinels] == [sentinels[0], sentinels[2], sentinels[1]]
    commit = Record(
        id="c", kind=Kind.COMMIT, source="repo", content=f"Add FIM\n\ndiff --git a/x b/x\n+{content}"
    )
    assert not set(sentinels) & set(encode(tokenizer, commit_text(commit, tokenizer)))
    # Training packs these ids; text without a special token's name renders and encodes as before.
    (packed,) = tokenize_records([record], tokenizer, TransformConfig(fim_rate=0.0), tmp_path)
    assert packed.tolist() == [*encode(tokenizer, plain), tokenizer.eos_token_id]
    assert literal("x = 1\n", tokenizer) == "x = 1\n" and literal(f"a{LITERAL}b", None) == "ab"
    assert encode(tokenizer, "<filename>a.py\nx = 1\n") == tokenizer("<filename>a.py\nx = 1\n").input_ids


def test_kind_weights_thin_repeat_and_drop_by_kind_the_same_way_every_time() -> None:
    records = [
        *(code_record(rid=f"code{i}") for i in range(50)),
        *(Record(content="Fix\n", kind=Kind.COMMIT, source="t", id=f"commit{i}") for i in range(400)),
        *(Record(content="# Doc\n", kind=Kind.DOC, source="t", id=f"doc{i}") for i in range(10)),
    ]
    weights = {"code": 2.0, "commit": 0.25, "doc": 0.0}
    indices = weighted_indices(records, weights, seed=0)
    kinds = [records[i].kind for i in indices]
    assert kinds.count(Kind.CODE) == 100  # every code example twice
    assert Kind.DOC not in kinds
    assert 60 <= kinds.count(Kind.COMMIT) <= 140  # a quarter of 400, drawn
    assert indices == sorted(indices)  # record order kept; copies side by side
    assert weighted_indices(records, weights, seed=0) == indices
    kept = {records[i].id for i in indices}
    reordered = weighted_indices(list(reversed(records)), weights, seed=0)
    assert {list(reversed(records))[i].id for i in reordered} == kept  # decided per record, not by place
    assert weighted_indices(records, weights, seed=1) != indices
    assert weighted_indices(records, {}, seed=0) == list(range(len(records)))  # missing kinds: weight 1

    sequences = [np.zeros(3 if r.kind is Kind.CODE else 2, dtype=np.int32) for r in records]
    assert tokens_by_kind(records, sequences) == {"commit": 800, "code": 150, "doc": 20}


def test_the_code_files_the_newest_commits_touched_weigh_more() -> None:
    def commit(sha: str, date: str, *files: str) -> Record:
        meta = {"sha": sha, "date": date, "files": list(files)}
        return Record(content=f"{sha}\n", kind=Kind.COMMIT, source="t", id=sha, meta=meta)

    records = [
        code_record(rid="old", path="src/old.py"),
        code_record(rid="new", path="src/new.py"),
        code_record(rid="both", path="src/both.py"),
        Record(content="# Doc\n", kind=Kind.DOC, source="t", id="doc", file_path="README.md"),
        # Out of date order on purpose; one date in another time zone, one without a zone (UTC).
        commit("c1", "2024-01-01T10:00:00+00:00", "src/old.py", "src/both.py"),
        commit("c3", "2024-03-01T12:00:00+02:00", "src/new.py", "README.md"),
        commit("c2", "2024-02-01T10:00:00", "src/both.py"),
    ]
    # Code files only (not the README the newest commit touched), and while they are at most half of
    # the code's characters: here a third of them, then two thirds.
    assert recent_files(records, 1) == {"src/new.py"}
    assert recent_files(records, 0) == frozenset()
    assert recent_files(records, 2) == frozenset()  # src/new.py and src/both.py: most of the code
    more = [*records, *(code_record(rid=f"more{i}", path=f"src/more{i}.py") for i in range(3))]
    assert recent_files(more, 2) == {"src/new.py", "src/both.py"}  # two of six files of one size

    recent = recent_files(more, 2)
    indices = weighted_indices(more, {"commit": 0.0}, seed=0, recent=recent, recent_weight=3.0)
    ids = [more[i].id for i in indices]
    # Code files the two newest commits touched, three times; the doc and the other files, once;
    # commits dropped by their kind's weight.
    assert ids == ["old", "new", "new", "new", "both", "both", "both", "doc", "more0", "more1", "more2"]
    assert weighted_indices(more, {}, seed=0, recent=recent) == list(range(len(more)))


def test_fim_span_split_is_a_window_around_an_editor_sized_middle() -> None:
    text = "".join(f"line_{i} = compute({i}, {i + 1})\n" for i in range(200)) + "\n\n"
    for seed in range(200):
        prefix, middle, suffix = fim_span_split(text, random.Random(seed), 120)
        assert prefix + middle + suffix in text  # one slice of the file
        assert len(prefix) <= 120 and len(suffix) <= 120
        assert prefix == "" or prefix.startswith("line_")  # cut back to a line start
        assert middle.strip() and not middle.endswith("\n") and middle.count("\n") <= 3
        assert suffix.startswith("\n") or suffix == ""
    assert fim_span_split("\n\n", random.Random(0), 10) == fim_split("\n\n", random.Random(0))


def test_window_fim_examples_fit_a_block_and_whole_file_fim_does_not() -> None:
    record = code_record(content="".join(f"value_{i} = {i} * 2\n" for i in range(300)))
    window = TransformConfig(fim_rate=1.0, spm_rate=0.0, fim_window_chars=200)
    whole = TransformConfig(fim_rate=1.0)
    for seed in range(20):
        rng = random.Random(seed)
        short = example_text(record, None, window, rng)
        assert short.startswith(FIM_TOKENS[0]) and len(short) <= 2 * 200 + 80 + 60
        _order, prefix, middle, suffix = _parse_fim(short)
        header = "# File: src/x.py\n"  # the path comes first, then the window
        assert prefix.startswith(header) and middle.strip()
        assert prefix.removeprefix(header) + middle + suffix in record.content
    lengths = [len(example_text(record, None, whole, random.Random(seed))) for seed in range(20)]
    assert min(lengths) > len(record.content)  # the whole file, every time
    with pytest.raises(RepotuneError, match="fim_window_chars"):
        TransformConfig(fim_window_chars=0)


def test_tokenize_appends_eos_and_reuses_the_cache(tmp_path: Path) -> None:
    inner = make_tiny_tokenizer(chat_template=True)
    ensure_fim_tokens(inner)
    tokenizer = CountingTokenizer(inner)
    config = TransformConfig(fim_rate=0.0)
    first = tokenize_records(mixed_records(), tokenizer, config, tmp_path)
    assert tokenizer.calls == 1
    assert all(seq[-1] == inner.eos_token_id and seq.dtype == np.int32 for seq in first)
    assert inner.decode(first[0][:-1].tolist()) == code_text(code_record())
    assert inner.decode(first[2][:-1].tolist()) == commit_text(mixed_records()[2])

    again = tokenize_records(mixed_records(), tokenizer, config, tmp_path)
    assert tokenizer.calls == 1
    assert [s.tolist() for s in again] == [s.tolist() for s in first]

    tokenize_records(mixed_records(), tokenizer, TransformConfig(fim_rate=1.0), tmp_path)
    assert tokenizer.calls == 2  # another config is another cache entry
    changed = mixed_records()
    changed[0].content += "# more\n"
    tokenize_records(changed, tokenizer, config, tmp_path)
    assert tokenizer.calls == 3
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 3


def test_fim_without_fim_tokens_is_refused() -> None:
    with pytest.raises(RepotuneError, match="ensure_fim_tokens"):
        tokenize_records([code_record()], make_tiny_tokenizer(), TransformConfig(fim_rate=0.5))
    tokenize_records([code_record()], make_tiny_tokenizer(), TransformConfig(fim_rate=0.0))


def test_pack_keeps_every_token_once_in_order_and_resets_positions() -> None:
    sequences = [np.arange(1, 6), np.arange(10, 14), np.arange(20, 30)]  # 5 + 4 + 10 = 19 tokens
    blocks = pack(sequences, seq_len=8, pad_id=0)
    assert blocks.input_ids.shape == blocks.position_ids.shape == blocks.labels.shape == (3, 8)
    assert blocks.input_ids.flatten()[:19].tolist() == np.concatenate(sequences).tolist()
    assert blocks.input_ids[2].tolist() == [27, 28, 29, 0, 0, 0, 0, 0]
    assert blocks.position_ids.tolist() == [
        [0, 1, 2, 3, 4, 0, 1, 2],
        [0, 0, 1, 2, 3, 4, 5, 6],  # the second example's tail restarts at the block start
        [0, 1, 2, 0, 1, 2, 3, 4],  # padding is a segment of its own
    ]
    assert blocks.labels.tolist() == [
        [-100, 2, 3, 4, 5, -100, 11, 12],
        [13, -100, 21, 22, 23, 24, 25, 26],
        [27, 28, 29, -100, -100, -100, -100, -100],
    ]
    assert blocks.real_tokens == 19 and blocks.real_token_fraction == pytest.approx(19 / 24)
    assert len(blocks.head(2)) == 2 and blocks.head(2).real_token_fraction == 1.0
    assert pack([], seq_len=8).input_ids.shape == (0, 8)
    # A sample of held-out blocks from every part of the stream, not its first examples only.
    many = pack([np.arange(1, 80)], seq_len=8, pad_id=0)  # 10 blocks, the last one padded
    assert [row[0] for row in many.spread(4).input_ids.tolist()] == [1, 25, 49, 73]  # blocks 0, 3, 6, 9
    assert (
        many.spread(4).real_tokens == 3 * 8 + 7
        and many.spread(5).labels[-1].tolist() == many.labels[9].tolist()
    )
    assert many.spread(10) is many and many.spread(99) is many and many.spread(1).real_tokens == 8
    assert many.spread(9).real_tokens == 79 - 8 and blocks.spread(2).real_tokens == 8 + 3


def test_pack_long_and_empty_examples_and_default_padding() -> None:
    blocks = pack(
        [np.array([5, 6]), np.array([], dtype=np.int32), np.arange(30, 37), np.array([9])], seq_len=4
    )
    assert blocks.input_ids.tolist() == [[5, 6, 30, 31], [32, 33, 34, 35], [36, 9, 9, 9]]
    assert blocks.position_ids.tolist() == [[0, 1, 0, 1], [0, 1, 2, 3], [0, 0, 0, 1]]
    assert blocks.labels.tolist() == [[-100, 6, -100, 31], [32, 33, 34, 35], [36, -100, -100, -100]]


def test_packing_wastes_little_and_beats_padded_batches() -> None:
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 300, size=int(n)) for n in rng.integers(5, 120, size=600)]
    blocks = pack(sequences, seq_len=256, pad_id=0)
    assert blocks.real_token_fraction >= 0.98
    assert blocks.real_tokens == sum(len(s) for s in sequences)
    padded = padded_batches(sequences, batch_size=8, pad_id=0)
    assert padded.real_token_fraction < blocks.real_token_fraction - 0.2
    batch = padded.batches[0]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape
    first = sequences[0]
    assert batch["labels"][0, : len(first)].tolist() == first.tolist()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_do_not_attend_across_boundaries(attn: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, default_data_collator

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(config).eval()
    model.config.use_cache = False  # as transformers.Trainer sets it (TrainingArguments.use_cache)
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(3, 300, size=n) for n in (5, 4, 10))
    blocks = pack([a, b, c], seq_len=12, pad_id=0)  # [a, b, c[:3]] and [c[3:], padding]
    dataset = PackedDataset(blocks)
    assert set(dataset[0]) == {"input_ids", "position_ids", "labels"}

    def logits(**inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(**{k: v.unsqueeze(0) for k, v in inputs.items()}).logits[0]

    def alone(tokens: np.ndarray) -> torch.Tensor:
        return logits(input_ids=torch.from_numpy(tokens).long())

    first, second = logits(**dataset[0]), logits(**dataset[1])
    assert torch.allclose(first[:5], alone(a), atol=1e-5)
    assert torch.allclose(first[5:9], alone(b), atol=1e-5)
    assert torch.allclose(first[9:12], alone(c[:3]), atol=1e-5)
    assert torch.allclose(second[:7], alone(c[3:]), atol=1e-5)

    # Trainer's default collator stacks the items; each row keeps its own segments.
    batch = default_data_collator([dataset[0], dataset[1]])
    with torch.no_grad():
        out = model(**batch)
    assert torch.allclose(out.logits[0], first, atol=1e-5) and torch.allclose(
        out.logits[1], second, atol=1e-5
    )
    assert torch.isfinite(out.loss)
