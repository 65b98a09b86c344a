"""Secret coverage as a number, precision on real code, and secrets planted in a real git repository.

The corpus (tests/secret_corpus.py) holds one fake secret per format, each rendered into every place
it can hide; the share redacted must stay at 100%. The Python standard library holds no live secret:
redacting it must find nothing beyond the test passwords today's rules were already redacting.
"""

from __future__ import annotations

import base64
import sysconfig
from pathlib import Path

import pytest
from tests.conftest import git
from tests.secret_corpus import SAMPLES, Sample, fake, measure, password, placements, survives

import repotune.clean
import repotune.ingest
from repotune.clean import CleanConfig
from repotune.clean.secrets import redact
from repotune.ingest import IngestConfig


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.format for s in SAMPLES])
def test_every_placement_of_every_format_is_redacted(sample: Sample) -> None:
    missed = []
    for place, text, hidden in placements(sample):
        out, counts = redact(text)
        if any(survives(h, out) for h in hidden):
            missed.append(f"{place}:\n{out}")
        assert sum(counts.values()) >= 1
    assert not missed, "\n\n".join(missed)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.format for s in SAMPLES])
def test_the_placeholder_names_the_kind(sample: Sample) -> None:
    # In source code, a command or the file it belongs in; elsewhere a wider rule may take it first
    # (a Kubernetes Secret's values are all `kubernetes_secret`).
    place, text, _ = next(iter(placements(sample)))
    assert f"<SECRET:{sample.kind}>" in redact(text)[0], place


def test_the_corpus_figure() -> None:
    coverage = measure()
    assert len(coverage.kinds) >= 60
    assert coverage.placements >= 60 * 10
    assert coverage.share == 1.0, [f"{m.sample.format} in {m.place}" for m in coverage.misses]
    places = {place for sample in SAMPLES for place, _, _ in placements(sample)}
    assert {
        "source",
        ".env",
        "yaml",
        "json",
        "notebook",
        "Dockerfile",
        "k8s stringData",
        "k8s data",
        "README",
        "commit message",
        "diff",
        "issue comment",
        "wiki page",
    } <= places


# Literal passwords in the standard library's own tests (and one in a docstring), redacted by the
# rules before the tables grew: (file, the line before redaction). Anything else is a false positive.
STDLIB_FINDINGS = {
    ("distutils/tests/test_config.py", "password:yh^%#rest-of-my-password"),
    ("test/test_nntplib.py", "self.server.login('testuser', 'testpw')"),
    ("test/test_smtplib.py", "sim_auth = ('Mr.A@somewhere.com', 'somepassword')"),
    ("test/test_smtplib.py", "smtp.login('psu', 'doesnotexist')"),
    ("test/test_ssl.py", 'KEY_PASSWORD = "somepass"'),
    ("test/test_urllib2_localnet.py", "PASSWD = 'testPass'"),
    ("test/test_urllib2_localnet.py", 'PASSWD = "testPass"'),
    ("test/test_urllib2_localnet.py", 'INCORRECT_PASSWD = "Incorrect"'),
    ("test/test_urllib2_localnet.py", 'PASSWD = "test123"'),
    (
        "test/test_urllib2net.py",
        '#                          urllib2.urlopen, "http://evil:thing@example.com")',
    ),
    ("urllib/request.py", "passwd='geheim$parole')"),
}


@pytest.mark.integration
def test_the_standard_library_gives_no_new_false_positives() -> None:
    # Every .py file of this Python's standard library (about 1,800 files, 30 MB on 3.11): ordinary
    # code full of `password`, `token`, `secret_name`, keys and hashes.
    root = Path(sysconfig.get_paths()["stdlib"])
    found = set()
    files = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        files += 1
        out, counts = redact(text)
        if counts:
            name = path.relative_to(root).as_posix()
            lines = zip(text.splitlines(), out.splitlines(), strict=False)
            found |= {(name, before.strip()) for before, after in lines if before != after}
    assert files > 500
    assert found <= STDLIB_FINDINGS


def _sample(kind: str) -> Sample:
    return next(s for s in SAMPLES if s.kind == kind)


def _format(prefix: str) -> Sample:
    return next(s for s in SAMPLES if s.format.startswith(prefix))


@pytest.mark.integration
def test_planted_secrets_survive_neither_files_nor_history(tmp_path: Path, make_repo) -> None:
    """Secrets in files, in files deleted since (their diffs), and in commit messages of a real git
    repository: none of them is left in train.jsonl or eval.jsonl after ingest + clean."""
    repo = make_repo([])
    planted: dict[str, Sample] = {
        "discord": _sample("discord_token"),
        "npm": _format("npm legacy UUID"),
        "pypi": _sample("pypi_token"),
        "vault": _sample("vault_token"),
        "databricks": _sample("databricks_token"),
        "dsn": _sample("sentry_dsn"),
        "jdbc": _format("JDBC ?password="),
        "url": _format("basic-auth URL"),
        "curl": _format("curl -u"),
        "age": _sample("age_secret_key"),
        "k8s": _sample("dockerhub_token"),
    }
    v = {name: sample.value for name, sample in planted.items()}
    notebook = next(text for place, text, _ in placements(planted["databricks"]) if place == "notebook")
    k8s = next(text for place, text, _ in placements(planted["k8s"]) if place == "k8s data")
    code = "\n".join(f"def handler_{i}(event):\n    return event.get('item_{i}')\n" for i in range(12))
    files = {
        "bot/main.js": f'const client = new Client();\nclient.login("{v["discord"]}");\n',
        ".npmrc": f"//registry.npmjs.org/:_authToken={v['npm']}\n",
        ".pypirc": f"[pypi]\nusername = __token__\npassword = {v['pypi']}\n",
        "deploy/vault.env": f"VAULT_ADDR=https://vault.internal\nVAULT_TOKEN={v['vault']}\n",
        "notebooks/etl.ipynb": notebook,
        "k8s/secret.yaml": k8s,
        "app/settings.py": f'SENTRY_DSN = "{v["dsn"]}"\nDATABASE_URL = "{v["jdbc"]}"\n' + code,
        "scripts/check.sh": f"#!/bin/sh\n{v['curl']}\n",
        "README.md": f"# App\n\nClone it with `git clone {v['url']}` and run it.\n\nIt handles events.\n",
    }
    for path, content in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
    git(repo, "add", "--all")
    git(repo, "commit", "-qm", "Add the app", date="2024-01-01T00:00:00+00:00")
    # A key that was committed, then removed: it lives on in the history's diff and message.
    (repo / "keys.txt").write_text(f"sops: {v['age']}\n")
    git(repo, "add", "--all")
    git(repo, "commit", "-qm", f"Add the sops key\n\nkey: {v['age']}", date="2024-01-02T00:00:00+00:00")
    (repo / "keys.txt").unlink()
    git(repo, "add", "--all")
    git(repo, "commit", "-qm", "Remove the key again", date="2024-01-03T00:00:00+00:00")
    # A table with a password column, and a later commit that adds rows at its end: that diff's hunk
    # starts far below the header row that names the column.
    seed_rows = [f"user{i},{password(i)}" for i in range(40)]
    (repo / "db" / "seed").mkdir(parents=True)
    (repo / "db" / "seed" / "users.csv").write_text("name,password\n" + "\n".join(seed_rows) + "\n")
    git(repo, "add", "--all")
    git(repo, "commit", "-qm", "Seed the users", date="2024-01-03T12:00:00+00:00")
    late = [password(100), password(101)]
    rows = [*seed_rows[:-1], f"user39,{late[0]}", f"user40,{late[1]}"]  # a change and an addition
    (repo / "db" / "seed" / "users.csv").write_text("name,password\n" + "\n".join(rows) + "\n")
    git(repo, "add", "--all")
    git(repo, "commit", "-qm", "Add a user", date="2024-01-03T13:00:00+00:00")
    for day in range(4, 10):
        (repo / "CHANGES.md").write_text(f"# Changes\n\nRelease {day} makes the handlers faster again.\n")
        git(repo, "add", "--all")
        git(
            repo,
            "commit",
            "-qm",
            f"Release {day} ({fake(8, seed=day)})",
            date=f"2024-01-{day:02d}T00:00:00+00:00",
        )

    repotune.ingest.run(IngestConfig(source=str(repo), output=tmp_path / "in"))
    raw_in = (tmp_path / "in" / "records.jsonl").read_text()
    result = repotune.clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    raw_out = (tmp_path / "out" / "train.jsonl").read_text() + (tmp_path / "out" / "eval.jsonl").read_text()

    for name, sample in planted.items():
        # Each secret reached ingest's records (so the check below is not vacuous), and no part of it
        # reached the training data; the Kubernetes Secret holds its token in base64.
        hidden = base64.b64encode(sample.value.encode()).decode() if name == "k8s" else sample.hidden
        assert survives(hidden, raw_in), f"{name} was not ingested"
        assert not survives(hidden, raw_out), f"{name} survived clean"
    for value in (password(0), password(39), *late):
        assert value in raw_in and value not in raw_out, value
    assert '"table_headers":{"db/seed/users.csv":"name,password"}' in raw_in
    assert result.redactions["age_secret_key"] >= 2  # the diff that added it, and the message
    assert result.train_records + result.eval_records >= 8
