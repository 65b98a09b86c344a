"""Container images, named in one place and pinned by tag (set a digest here for production).

Every KFP component, the PyTorchJob, the ServingRuntime and the manifests take their image from here.
The images are built from `Dockerfile` (CPU) and `Dockerfile.cuda` at the repository root, and pushed
by `.github/workflows/images.yml` on a version tag. A team that builds its own names them with
:func:`for_run` (the ``--image`` / ``--cuda-image`` flags) or with ``REPOTUNE_IMAGE`` /
``REPOTUNE_CUDA_IMAGE``; :func:`use` makes that choice what :func:`cpu_image` and :func:`cuda_image`
return while a pipeline or a manifest is built.

References must not move: a tag that names a version (``0.1.0``, ``2025.06.1``, a commit hash) or a
digest (``@sha256:...``). ``latest`` and untagged names are refused, because a step that pulls a
different image than the one its run was compiled against cannot be reproduced or audited.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from repotune import __version__
from repotune.errors import RepotuneError

REGISTRY = "ghcr.io/repotune"
CPU_IMAGE = f"{REGISTRY}/repotune:{__version__}"
"""The component image: Python, the CPU build of torch and this package."""
CUDA_IMAGE = f"{REGISTRY}/repotune-cuda:{__version__}"
"""The same with a CUDA build of torch, for train steps that ask for accelerators."""
CUDA_SUFFIX = "-cuda"
"""How the CUDA image's repository is named beside the CPU one (what images.yml pushes)."""
HF_RUNTIME = "kserve-huggingfaceserver"
"""KServe's Hugging Face (vLLM) ServingRuntime, the default deploy target on GPU clusters."""
IMAGE_ENV = "REPOTUNE_IMAGE"
CUDA_IMAGE_ENV = "REPOTUNE_CUDA_IMAGE"

# The reference grammar of the distribution spec (github.com/distribution/reference), in the parts
# that matter here: an optional registry host (with a dot or a port, or `localhost`), lowercase path
# components, then a tag and/or a sha256 digest.
_HOST = r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d+)?|localhost(?::\d+)?|[A-Za-z0-9-]+:\d+)"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
# Tags that name a channel rather than a build: they move by design.
MOVING_TAGS = frozenset({"latest", "stable", "main", "master", "edge", "nightly", "dev", "develop", "head"})


@dataclass(frozen=True)
class Images:
    """The two images a run uses, each a reference that does not move."""

    cpu: str
    """Every step without accelerators, the multi-node train launcher and the repotune predictor."""
    cuda: str | None
    """Train and evaluate steps (and predictors) whose recipe asks for GPUs; None when it was not given
    and cannot be derived (the CPU image is pinned by digest), which is an error only if it is used."""

    def __post_init__(self) -> None:
        check_image(self.cpu, "image")
        if self.cuda is not None:
            check_image(self.cuda, "CUDA image")


def check_image(reference: str, setting: str) -> str:
    """``reference`` when it names one image that cannot change under it, else a RepotuneError that
    names ``setting`` (the flag or variable it came from) and says what to give instead."""
    match = _REFERENCE.match(reference)
    if match is None:
        raise RepotuneError(
            f"{setting} {reference!r} is not an image reference (REGISTRY/NAME:TAG, lowercase name)"
        )
    tag, digest = match["tag"], match["digest"]
    if digest is not None:
        return reference
    if tag is None:
        raise RepotuneError(
            f"{setting} {reference!r} has no tag, so it means :latest, which moves: give a version tag "
            "(NAME:0.1.0) or a digest (NAME@sha256:...)"
        )
    if tag.lower() in MOVING_TAGS or not re.search(r"\d", tag):
        raise RepotuneError(
            f"{setting} {reference!r}: the tag {tag!r} names a channel, not a build, and moves: give a "
            "version tag (NAME:0.1.0) or a digest (NAME@sha256:...)"
        )
    return reference


def cuda_beside(reference: str, setting: str = "image") -> str | None:
    """The CUDA image that images.yml pushes beside ``reference``: the repository name with ``-cuda``,
    the same tag. None for a reference pinned by digest, which names that one image only."""
    match = _REFERENCE.match(check_image(reference, setting))
    assert match is not None  # check_image refused anything else
    if match["digest"] is not None:
        return None
    return f"{match['name']}{CUDA_SUFFIX}:{match['tag']}"


def for_run(image: str | None = None, cuda_image: str | None = None) -> Images:
    """The images for a run: ``image`` / ``cuda_image`` (the ``--image`` / ``--cuda-image`` flags) when
    given, else ``REPOTUNE_IMAGE`` / ``REPOTUNE_CUDA_IMAGE``, else the project's own (:data:`CPU_IMAGE`,
    :data:`CUDA_IMAGE`). A CPU image chosen without a CUDA image brings its ``-cuda`` sibling (same
    registry and tag), so a team's registry is used for both. Every reference is checked: a moving
    tag or an untagged name is refused, naming where it came from."""
    env_cpu, env_cuda = os.environ.get(IMAGE_ENV) or None, os.environ.get(CUDA_IMAGE_ENV) or None
    # (reference, where it came from) of a CPU image someone chose, or None for the project's own
    chosen = (image, "--image") if image is not None else (env_cpu, IMAGE_ENV) if env_cpu else None
    cpu = check_image(*chosen) if chosen is not None else CPU_IMAGE
    if cuda_image is not None:
        cuda = check_image(cuda_image, "--cuda-image")
    elif env_cuda is not None:
        cuda = check_image(env_cuda, CUDA_IMAGE_ENV)
    elif chosen is not None:
        cuda = cuda_beside(*chosen)
    else:
        cuda = CUDA_IMAGE
    return Images(cpu=cpu, cuda=cuda)


_chosen: ContextVar[Images | None] = ContextVar("repotune_images", default=None)


@contextlib.contextmanager
def use(images: Images) -> Iterator[Images]:
    """Within the block, :func:`cpu_image` and :func:`cuda_image` return ``images``: how ``compile``,
    ``submit`` and ``deploy`` build a pipeline or manifests for a registry given on the command line.
    Scoped to this thread or task, and undone on exit."""
    token = _chosen.set(images)
    try:
        yield images
    finally:
        _chosen.reset(token)


def current() -> Images:
    """The images in use: the ones :func:`use` chose, else as :func:`for_run` resolves them."""
    return _chosen.get() or for_run()


def environment(chosen: Images) -> dict[str, str]:
    """``chosen`` as the variables :func:`for_run` reads: what a pipeline step that names an image
    itself (the deploy step's ServingRuntime, the multi-node train step's PyTorchJob) is given, so that
    it names the images its pipeline was compiled with rather than the project's own."""
    env = {IMAGE_ENV: chosen.cpu}
    if chosen.cuda is not None:
        env[CUDA_IMAGE_ENV] = chosen.cuda
    return env


def cpu_image() -> str:
    """The CPU image: the one :func:`use` chose, else ``REPOTUNE_IMAGE``, else :data:`CPU_IMAGE`."""
    return current().cpu


def cuda_image() -> str:
    """The CUDA image: the one :func:`use` chose, else as :func:`for_run` resolves it."""
    chosen = current()
    if chosen.cuda is None:
        raise RepotuneError(
            f"the image {chosen.cpu!r} is pinned by digest, which names that image only, and this recipe "
            "asks for GPUs: give the CUDA image too (--cuda-image, or REPOTUNE_CUDA_IMAGE)"
        )
    return chosen.cuda
