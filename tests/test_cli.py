"""The `repotune` command as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def repotune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repotune.cli", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_ingest_then_clean_from_the_command_line(sample_repo: Path, tmp_path: Path) -> None:
    done = repotune("ingest", str(sample_repo), "-o", str(tmp_path / "in"))
    assert done.returncode == 0, done.stderr
    assert "ingested" in done.stderr and "skipped:" in done.stderr
    manifest = json.loads((tmp_path / "in" / "manifest.json").read_text())
    assert manifest["kept"]["commit"] == 3
    done = repotune("clean", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "kept" in done.stderr
    for name in ("train.jsonl", "eval.jsonl", "stats.json", "report.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def _one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in done.stderr


def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    _one_line_error(
        repotune("ingest", str(tmp_path / "missing"), "-o", str(tmp_path / "o")), "does not exist"
    )
    _one_line_error(
        repotune("ingest", str(tmp_path), "-o", str(tmp_path / "o"), "--include", "code,binaries"),
        "unknown kind 'binaries'",
    )
    _one_line_error(
        repotune("ingest", str(tmp_path), "-o", str(tmp_path / "o"), "--include", ""), "--include is empty"
    )
    corrupt = tmp_path / "broken.zip"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    _one_line_error(repotune("ingest", str(corrupt), "-o", str(tmp_path / "o")), "corrupt or unreadable")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.py", "print('escaped')\n")
    _one_line_error(repotune("ingest", str(evil), "-o", str(tmp_path / "o")), "escapes the archive")
    renamed = tmp_path / "evil.tar.gz"  # a zip by another name: tarfile's reasons span five lines
    renamed.write_bytes(evil.read_bytes())
    _one_line_error(repotune("ingest", str(renamed), "-o", str(tmp_path / "o")), "looks like a zip archive")
    with zipfile.ZipFile(tmp_path / "nothing.zip", "w"):
        pass
    _one_line_error(repotune("ingest", str(tmp_path / "nothing.zip"), "-o", str(tmp_path / "o")), "is empty")
    _one_line_error(
        repotune("ingest", f"file://{tmp_path}/nothing.git", "-o", str(tmp_path / "o")), "cannot clone"
    )
    _one_line_error(repotune("ingest", "github:not-a-repo", "-o", str(tmp_path / "o")), "github:OWNER/REPO")
    _one_line_error(repotune("clean", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")), "does not exist")
    _one_line_error(repotune("clean", str(tmp_path), "-o", str(tmp_path / "o")), "no records.jsonl")
    _one_line_error(
        repotune("ingest", str(tmp_path), "-o", str(tmp_path / "o"), "--since", "last tuesday"), "--since"
    )
    subprocess.run(["git", "init", "--quiet", "--bare", str(tmp_path / "bare.git")], check=True)
    _one_line_error(
        repotune("ingest", str(tmp_path / "bare.git"), "-o", str(tmp_path / "o")), "is a bare git repository"
    )
    (tmp_path / "empty").mkdir()
    _one_line_error(
        repotune("ingest", str(tmp_path / "empty"), "-o", str(tmp_path / "o")), "yielded no records"
    )
    assert not (tmp_path / "o" / "records.jsonl").exists()


def test_clean_names_a_broken_manifest_or_record_in_one_line(sample_repo: Path, tmp_path: Path) -> None:
    assert repotune("ingest", str(sample_repo), "-o", str(tmp_path / "in")).returncode == 0
    manifest_path, records_path = tmp_path / "in" / "manifest.json", tmp_path / "in" / "records.jsonl"
    manifest, records = manifest_path.read_text(), records_path.read_text()

    def clean() -> subprocess.CompletedProcess[str]:
        return repotune("clean", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workers", "2")

    manifest_path.write_text(manifest[:-20])
    _one_line_error(clean(), "manifest.json: not valid JSON")
    broken = json.loads(manifest)
    broken["split"] = {"mode": "temporal", "cut": {"commit": "0" * 40}}
    manifest_path.write_text(json.dumps(broken))
    _one_line_error(clean(), "manifest.json: its temporal split's cut has no date (split.cut.date)")
    manifest_path.write_text(manifest)
    lines = records.splitlines()
    wrong = json.loads(lines[1])
    wrong["content"] = 5
    records_path.write_text("\n".join([lines[0], json.dumps(wrong), *lines[2:]]) + "\n")
    _one_line_error(clean(), "records.jsonl:2: not a repotune record (the field 'content' is a number (5)")
    wrong["content"], wrong["meta"] = "text", ["not", "an", "object"]
    records_path.write_text("\n".join([lines[0], json.dumps(wrong), *lines[2:]]) + "\n")
    _one_line_error(clean(), "records.jsonl:2: not a repotune record (the field 'meta' is an array")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_a_stage_writes_only_into_a_new_or_empty_folder_or_its_own_earlier_output(
    sample_repo: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"  # `-o .` in a checkout: the stage's README.md would replace the project's
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    _one_line_error(
        repotune("ingest", str(sample_repo), "-o", str(project)),
        f"the output folder {project} is not empty (README.md) and holds no earlier ingest output",
    )
    assert [path.name for path in project.iterdir()] == ["README.md"]
    _one_line_error(repotune("ingest", str(sample_repo), "-o", str(project / "README.md")), "is a file")
    _one_line_error(
        repotune("ingest", str(sample_repo), "-o", str(project / "README.md" / "out")),
        "cannot create the output folder",
    )
    for _ in range(2):  # its own earlier output is written over
        assert repotune("ingest", str(sample_repo), "-o", str(tmp_path / "in")).returncode == 0
    _one_line_error(
        repotune("clean", str(tmp_path / "in"), "-o", str(tmp_path / "in")), "holds no earlier clean output"
    )


def test_help_lists_the_stages() -> None:
    done = repotune("--help")
    assert done.returncode == 0
    assert "ingest" in done.stdout and "clean" in done.stdout
    assert repotune("-h").stdout == done.stdout
    assert repotune("train", "-h").returncode == 0
    from repotune import __version__

    assert repotune("--version").stdout == f"repotune {__version__}\n"


TEAM = "registry.example.com/ml/repotune"


def _images(path: Path) -> dict[str, str]:
    import yaml

    spec = next(yaml.safe_load_all(path.read_text()))
    return {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def test_compile_and_deploy_take_a_teams_images(tmp_path: Path) -> None:
    import yaml

    done = repotune("compile", "-o", str(tmp_path / "gpu.yaml"), "--recipe", "qwen2.5-coder-1.5b-gpu",
                    "--image", f"{TEAM}:1.4.2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    images = _images(tmp_path / "gpu.yaml")
    assert images.pop("exec-train") == images.pop("exec-evaluate") == f"{TEAM}-cuda:1.4.2"
    assert images.pop("exec-score-base") == f"{TEAM}-cuda:1.4.2"
    assert set(images.values()) == {f"{TEAM}:1.4.2"}
    done = repotune("compile", "-o", str(tmp_path / "cpu.yaml"), "--image", f"{TEAM}:1.4.2",
                    "--cuda-image", "registry.example.com/gpu/trainer:7")  # fmt: skip
    assert done.returncode == 0 and set(_images(tmp_path / "cpu.yaml").values()) == {f"{TEAM}:1.4.2"}
    _one_line_error(
        repotune("compile", "-o", str(tmp_path / "x.yaml"), "--image", f"{TEAM}:latest"),
        "--image 'registry.example.com/ml/repotune:latest': the tag 'latest' names a channel",
    )
    assert not (tmp_path / "x.yaml").exists()

    done = repotune("deploy", "s3://models/app", "--name", "app", "--namespace", "team-a",
                    "--runtime", "repotune", "--dry-run", "--image", f"{TEAM}:1.4.2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    runtime = next(o for o in yaml.safe_load_all(done.stdout) if o["kind"] == "ServingRuntime")
    assert runtime["spec"]["containers"][0]["image"] == f"{TEAM}:1.4.2"


def test_submit_flags_reach_the_kfp_api() -> None:
    """--service-account, --kfp-namespace, --skip-kfp-version-check and --image, through the real kfp SDK
    against the KFP API stand-in."""
    from tests.kfp_api import running_kfp_api

    source = "https://git.example.com/team/app.git"
    with running_kfp_api(tag_name="2.3.0") as kfp:
        refused = repotune("submit", source, "--host", kfp.url)
        _one_line_error(refused, f"the KFP backend at {kfp.url} is 2.3.0; this pipeline needs KFP 2.15.0")
        assert "--skip-kfp-version-check" in refused.stderr and kfp.runs == {}

        done = repotune("submit", source, "--host", kfp.url, "--skip-kfp-version-check", "--kfp-namespace",
                        "team-a", "--namespace", "models", "--service-account", "team-a-runner", "--image",
                        f"{TEAM}:1.4.2", "--set", "max_steps=5", "--run-name", "app-1")  # fmt: skip
        assert done.returncode == 0, done.stderr
        (run,) = kfp.runs.values()
        assert done.stderr.strip() == f"started run {run['run_id']} (app-1) on {kfp.url} as team-a-runner"
        assert run["service_account"] == "team-a-runner"
        assert kfp.experiments[run["experiment_id"]]["namespace"] == "team-a"
        assert run["runtime_config"]["parameters"] == {
            "source": source, "ref": "", "training": {"max_steps": 5}, "namespace": "models",
            "artifacts_root": "s3://repotune/runs", "model_name": "repotune", "deploy_name": "repotune",
        }  # fmt: skip
        spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
        assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
            f"{TEAM}:1.4.2"
        }

    with running_kfp_api(tag_name="2.15.0") as kfp:
        done = repotune("submit", source, "--host", kfp.url, "--service-account", "")
        assert done.returncode == 0, done.stderr
        (run,) = kfp.runs.values()
        assert run.get("service_account") is None and "as KFP's default account" in done.stderr
        done = repotune("submit", source, "--host", kfp.url)
        assert done.returncode == 0 and "as repotune-pipeline-runner" in done.stderr
        # a second project's run: its own registered model, InferenceService, store prefix and data
        done = repotune("submit", source, "jira:SHOP", "--host", kfp.url, "--model-name", "shop",
                        "--deploy-name", "shop", "--artifacts", "s3://team-shop/runs", "--include",
                        "code,issues", "--eval", "line_samples=50", "--jira-url",
                        "https://jira.example.com", "--min-confidence", "0.6")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert kfp.runs[done.stderr.split()[2]]["runtime_config"]["parameters"] == {
            "source": source, "more_sources": ["jira:SHOP"], "ref": "", "training": {},
            "include": "code,issues", "evaluation": {"line_samples": 50}, "deploy_min_confidence": 0.6,
            "source_settings": {"jira_url": "https://jira.example.com"}, "artifacts_root": "s3://team-shop/runs",
            "model_name": "shop", "namespace": "repotune", "deploy_name": "shop",
        }  # fmt: skip
        # what the cluster would trip over, minutes or hours in, is refused before the run starts
        started = len(kfp.runs)
        _one_line_error(
            repotune("submit", "/srv/app", "--host", kfp.url), "is not a place the cluster can read"
        )
        _one_line_error(repotune("submit", source, "--host", kfp.url, "--set", "max_stepz=3"), "max_stepz")
        _one_line_error(
            repotune("submit", source, "--host", kfp.url, "--namespace", "BAD_NS"),
            "not a Kubernetes namespace",
        )
        for flag, value, message in (
            ("--kfp-namespace", "Team_A", "not a Kubernetes namespace"),
            ("--deploy-name", "Shop.v2", "not a Kubernetes resource name"),
            ("--artifacts", "/srv/runs", "expected s3://BUCKET/PREFIX"),
            ("--include", "code,binaries", "unknown kind 'binaries'"),
            ("--eval", "lines=3", "--eval: unknown key 'lines'"),
            ("--min-confidence", "1.5", "--min-confidence"),
        ):
            _one_line_error(repotune("submit", source, "--host", kfp.url, flag, value), message)
        # a token in the URL would become a run parameter: refused, and never printed back
        token = "https://x-access-token:ghp_secret1@github.com/acme/shop.git"
        refused = repotune("submit", token, "--host", kfp.url)
        _one_line_error(refused, "the URL carries credentials")
        assert "ghp_secret1" not in refused.stderr
        assert len(kfp.runs) == started
    unreachable = repotune("submit", source, "--host", "http://admin:kfpsecret@127.0.0.1:9")
    _one_line_error(unreachable, "cannot reach the KFP API at http://127.0.0.1:9")
    assert "kfpsecret" not in unreachable.stderr


def test_run_refuses_an_unreachable_tracking_server_in_one_line(tmp_path: Path) -> None:
    from tests.s3_server import closed_port_url

    dead = closed_port_url()
    done = repotune("run", str(tmp_path), "--recipe", "tiny-cpu", "--workdir", str(tmp_path / "home"),
                    "--tracking-uri", dead)  # fmt: skip
    _one_line_error(done, f"cannot reach the MLflow tracking server at {dead}")
    assert not (tmp_path / "home").exists()


def _weed_running(folder: Path) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"weed" in command and str(folder).encode() in command:
                return True
    return False


def test_a_demo_run_with_a_local_object_store(tmp_path: Path) -> None:
    """`make demo` on the tiny recipe: `repotune run --local-s3` starts SeaweedFS, publishes every stage's
    outputs to it as on a cluster, renders the InferenceService against the published model, shows a
    line per stage (the full log is in the run folder), and stops the store."""
    import re

    import yaml
    from tests.conftest import git
    from tests.test_pipeline import QUICK_EVAL, _project

    from repotune import storage
    from repotune.pipelines import seaweedfs

    repo = tmp_path / "repo"
    repo.mkdir()
    _project(repo)
    sha = git(repo, "rev-parse", "HEAD").strip()
    home, run_dir = tmp_path / "home", tmp_path / "run"
    quick = [arg for key, value in QUICK_EVAL.items() for arg in ("--eval", f"{key}={value}")]
    done = repotune("run", str(repo), "--recipe", "tiny-cpu", "--workdir", str(home), "-o", str(run_dir),
                    "--local-s3", "--no-query", "--set", "max_steps=20", *quick)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stderr.splitlines()
    # kfp.local printed about 550 lines (executor JSON, warnings, rules); a person sees a few dozen
    assert len(shown) < 60 and done.stdout == "", done.stderr
    assert (
        "\x1b[" not in done.stderr and "executorInput" not in done.stderr and "Traceback" not in done.stderr
    )
    for stage in ("ingest", "clean", "train", "evaluate", "deploy"):
        assert any(re.match(rf"^{stage} +succeeded +\S+", line) for line in shown), (stage, done.stderr)
    assert sum(1 for line in shown if re.match(r"^train +step \d+/20 ", line)) == 4  # each quarter
    assert f"full log: {run_dir / 'run.log'}" in shown
    log = (run_dir / "run.log").read_text()
    assert len(log.splitlines()) > 10 * len(shown) and "Executing task 'train'" in log
    # the steps' cluster requests mean nothing here, and kfp.local's two lines a step about it go
    assert "have no effect in the current local runner" not in log
    assert any(line.startswith("object store: SeaweedFS S3 at http://127.0.0.1:") for line in shown)
    # the evaluation's four-arm table
    assert "| arm | line exact match |" in done.stderr and "| base + retrieval" in done.stderr

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["artifacts"] == f"s3://repotune/runs/repo/{sha}"
    # the arm the closing query serves: the one evaluate chose, or the best candidate arm it found
    decision = status["decision"]
    assert decision["arm"] in ("candidate", "candidate_retrieval")
    assert decision["retrieval"] is (decision["arm"] == "candidate_retrieval")
    isvc = next(o for o in yaml.safe_load_all((run_dir / status["manifest"]).read_text())
                if o["kind"] == "InferenceService")  # fmt: skip
    model_uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert re.fullmatch(rf"s3://repotune/runs/repo/{sha}/[0-9a-f]+/model", model_uri)
    assert f"InferenceService: {run_dir / 'inferenceservice.yaml'}" in shown
    # how to serve the model as it was evaluated (the server alone follows how it was trained)
    flags = ["--retrieval", "on" if decision["retrieval"] else "off"]
    if isinstance(decision.get("fim"), bool):
        flags += ["--fim", "on" if decision["fim"] else "off"]
    command = " ".join(["repotune", "serve", str(status["model"]), *flags])
    assert any(line.startswith("serve it as evaluated (") and line.endswith(command) for line in shown), shown

    # the store was stopped with the run; what it holds is there for the next one
    assert not _weed_running(home / "s3")
    with seaweedfs.running(home / "s3") as server:
        client = seaweedfs.client(server)
        for uri in (f"s3://repotune/runs/repo/{sha}/ingest", f"s3://repotune/runs/repo/{sha}/clean",
                    model_uri, model_uri.removesuffix("/model") + "/evaluation"):  # fmt: skip
            assert storage.exists_complete(uri, client=client), uri
        names = [o.object_name for o in client.list_objects("repotune", prefix="runs/", recursive=True)]
        # the checkpoints were uploaded as they were saved, and deleted once the model was published
        assert not any("/checkpoints/" in name for name in names)
    checkpoints = model_uri.removesuffix("/model") + "/checkpoints"
    assert f"uploaded checkpoint-20 to {checkpoints}/checkpoint-20/" in log
    assert f"from {checkpoints}: the model is published" in log
    assert not _weed_running(home / "s3")


def test_ctrl_c_says_interrupted_in_one_line_and_exits_130(tmp_path: Path, monkeypatch, capsys) -> None:
    """typer turns a KeyboardInterrupt into a silent exit 130 before the command line's own handler."""
    from repotune import cli
    from repotune.pipelines import submit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(submit, "compile_pipeline", interrupted)
    monkeypatch.setattr(sys, "argv", ["repotune", "compile", "-o", str(tmp_path / "p.yaml")])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted"]


def test_ctrl_c_in_training_says_how_to_resume(cleaned: Path, tmp_path: Path) -> None:
    import signal

    command = [sys.executable, "-m", "repotune.cli", "train", str(cleaned), "-o", str(tmp_path / "model"),
               "--recipe", "tiny-cpu", "--set", "max_steps=200", "--set", "save_every_steps=2",
               "--set", "data.seq_len=64", "--set", "max_epochs=null"]  # fmt: skip
    # A shell without job control starts a background job with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: the child gets the default back, as a terminal's foreground job has it.
    with subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:  # fmt: skip
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("step 3/"):  # checkpoint-2 is saved
                process.send_signal(signal.SIGINT)
                break
        rest = process.stderr.read()
        process.wait(timeout=120)
    assert process.returncode == 130, rest
    last = rest.strip().splitlines()[-1]
    assert last == "interrupted; rerun the same command to resume from the newest checkpoint"
    assert "Traceback" not in rest
