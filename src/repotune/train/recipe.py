"""The training recipe: every knob with its meaning and unit, validated before any work starts.

Recipes are commented YAML files in ``configs/``; ``load_recipe`` reads one, applies command-line
overrides, and refuses unknown keys and wrong types with a message that names the setting.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from repotune.config import from_dict, load_yaml
from repotune.errors import RepotuneError


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    """LoRA rank r: the inner dimension of each low-rank update."""
    alpha: float = 32.0
    """LoRA scaling numerator; updates are scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA input, 0 to 1."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None detects the attention and MLP projections of the architecture."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise RepotuneError("lora.rank must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise RepotuneError("lora.dropout must be at least 0 and below 1")


@dataclass(frozen=True)
class KindWeights:
    """How much of each kind of record the training stream carries, as a multiplier on its examples.

    1 keeps every example of the kind once; 0.25 keeps a seeded quarter of them (the same ones on every
    run with the same seed); 2 puts each in twice; 0 drops the kind. Retuning a mix is a matter of
    weights, not of re-ingesting: a repository's history can outweigh its code many times over (a
    project with 1,000 commits of diffs), and a model trained mostly on diffs writes diff lines.
    """

    code: float = 1.0
    """Source files (plain or fill-in-the-middle examples)."""
    doc: float = 1.0
    """Documentation files."""
    commit: float = 1.0
    """Commits (diff, then message)."""
    issue: float = 1.0
    """Issue threads."""
    pull_request: float = 1.0
    """Pull request threads."""
    wiki_page: float = 1.0
    """Confluence and Notion pages."""
    diagram: float = 1.0
    """Architecture diagrams as text."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not 0.0 <= value <= 100.0:
                raise RepotuneError(f"data.kind_weights.{item.name} must be from 0 to 100, got {value!r}")

    def as_mapping(self) -> dict[str, float]:
        """Kind name (``Kind`` value) to weight."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}


@dataclass(frozen=True)
class DataSettings:
    seq_len: int = 512
    """Tokens per packed training block."""
    fim_rate: float = 0.5
    """Share of code files turned into fill-in-the-middle examples, 0 to 1."""
    spm_rate: float = 0.5
    """Of the FIM examples, the share in suffix-prefix-middle order (the rest prefix-suffix-middle)."""
    fim_window_chars: int | None = None
    """None: a FIM example is the whole file cut at two random characters (StarCoder's form). A number:
    a window of the file around a short middle (the rest of a line, or a few lines), with up to this
    many characters on each side; keep it within a block (about seq_len x 1.2 characters of code), so
    the sentinels, the context and the middle land in the same block and the form can be learned."""
    max_eval_blocks: int | None = 64
    """Held-out blocks scored for eval loss (each costs a forward pass); None scores them all."""
    max_train_blocks: int | None = None
    """Cap on training blocks (a quick run on a big repository); None uses them all."""
    retrieval_rate: float = 0.0
    """Share of code examples, 0 to 1, given retrieved cross-file context in front (BM25 over chunks of
    the other training files, in the format evaluation and serving prompt with), so the model learns
    to use that context; 0 trains without it."""
    retrieval_context_tokens: int = 128
    """Budget of that context in tokens; under half of seq_len, so the file it precedes starts in the
    same block often enough to attend to it."""
    retrieval_embedding_model: str | None = None
    """A sentence-transformers model (a local folder or an ``s3://`` folder) that embeds the retrieval
    index's chunks beside BM25 (``RetrievalConfig.embedding_model``): the pipeline's index, training
    examples' context, evaluation and serving all search with it. None: BM25 alone."""
    kind_weights: KindWeights = field(default_factory=KindWeights)
    """Multiplier per record kind on its training examples (held-out blocks are never weighted)."""
    recent_commits: int = 0
    """The newest this many training commits name the files a team is working on (``recent_files``);
    0: none are named."""
    recent_weight: float = 1.0
    """Multiplier on the training examples of the code files those commits touched, on top of their
    kind's weight: where a budget sees a small share of the data, more of it goes to the files
    the next lines are likeliest to go to."""

    def __post_init__(self) -> None:
        if self.seq_len < 16:
            raise RepotuneError("data.seq_len must be at least 16 tokens")
        if self.recent_commits < 0:
            raise RepotuneError(f"data.recent_commits must be 0 or more, got {self.recent_commits!r}")
        if not 0.0 <= self.recent_weight <= 100.0:
            raise RepotuneError(f"data.recent_weight must be from 0 to 100, got {self.recent_weight!r}")
        for name in ("fim_rate", "spm_rate", "retrieval_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RepotuneError(f"data.{name} must be between 0 and 1")
        if self.fim_window_chars is not None and self.fim_window_chars < 1:
            raise RepotuneError("data.fim_window_chars must be at least 1 (or null for whole-file FIM)")
        if self.retrieval_context_tokens < 1:
            raise RepotuneError("data.retrieval_context_tokens must be at least 1")
        spec = self.retrieval_embedding_model
        if spec is not None and (not isinstance(spec, str) or not spec.strip()):
            raise RepotuneError(
                "data.retrieval_embedding_model must be a model folder or an s3:// folder, or null; "
                f"got {spec!r}"
            )
        if self.retrieval_rate > 0 and 2 * self.retrieval_context_tokens >= self.seq_len:
            raise RepotuneError(
                f"data.retrieval_context_tokens ({self.retrieval_context_tokens}) must be under half of "
                f"data.seq_len ({self.seq_len}), so the file after the context fits in the same block"
            )


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


@dataclass(frozen=True)
class ResourceSettings:
    """What the train step asks a cluster for (Kubernetes quantities, with units). Ignored locally."""

    nodes: int = 1
    """Machines to train on; above 1 the step runs as a Kubeflow PyTorchJob under torchrun."""
    gpus_per_node: int = 0
    """Accelerators per node (processes per node under torchrun); 0 trains on CPU."""
    gpu_resource: str = "nvidia.com/gpu"
    """The extended resource name the cluster's device plugin advertises."""
    cpu: str = "2"
    """CPU request and limit per node, a Kubernetes quantity ("8", "500m")."""
    memory: str = "8Gi"
    """Memory request and limit per node, with a unit ("64Gi", "512Mi"); a bare number means bytes."""
    gpu_toleration: bool = True
    """With GPUs: tolerate the NoSchedule taint GPU node pools carry under the accelerator's name
    (`nvidia.com/gpu`, the taint EKS and GKE GPU pools use and Kubernetes' ExtendedResourceToleration
    tolerates where it is on), so the steps, PyTorchJob pods and predictor can be placed there."""

    def requirements(self) -> dict[str, dict[str, str]]:
        """Kubernetes resource requirements of one pod: requests equal to limits (the Guaranteed QoS
        class, the last evicted), accelerators as the device plugin's extended resource."""
        amounts = {"cpu": str(self.cpu), "memory": str(self.memory)}
        if self.gpus_per_node > 0:
            amounts[self.gpu_resource] = str(self.gpus_per_node)
        return {"requests": dict(amounts), "limits": dict(amounts)}

    def tolerations(self) -> list[dict[str, str]]:
        """The pod's tolerations: the GPU taint's (``gpu_toleration``) when it asks for GPUs."""
        if self.gpus_per_node == 0 or not self.gpu_toleration:
            return []
        return [{"key": self.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise RepotuneError("resources.nodes must be at least 1")
        if self.gpus_per_node < 0:
            raise RepotuneError("resources.gpus_per_node must be 0 or more")
        for name in ("cpu", "memory"):
            value = getattr(self, name)
            if not _QUANTITY.match(value):
                raise RepotuneError(
                    f"resources.{name} {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)"
                )
        if self.memory.isdigit() and int(self.memory) < 2**20:
            raise RepotuneError(
                f"resources.memory {self.memory!r} is {self.memory} bytes; give a unit, e.g. {self.memory}Gi"
            )


@dataclass(frozen=True)
class Recipe:
    base_model: str = "smollm2-135m"
    """`smollm2-135m` (offline default), `tiny` (tests), a local folder, an s3:// URI or a hub id."""
    method: Literal["lora", "qlora", "full"] = "lora"
    """lora: low-rank adapters on a frozen model; qlora: the same on a 4-bit base (CUDA + bitsandbytes);
    full: every weight trains."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The low-rank adapters (method lora or qlora)."""
    data: DataSettings = field(default_factory=DataSettings)
    """How records become training blocks."""
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    """What the train step asks a cluster for (ignored on this machine)."""
    serving: ResourceSettings | None = None
    """What one replica of the deployed model asks for (the InferenceService's predictor); null: the
    same as `resources`. Serving needs the GPU, not the optimizer's memory: the GPU recipes ask less."""
    micro_batch_size: int = 4
    """Blocks per forward pass on each device."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the global batch is micro_batch_size x this x devices."""
    learning_rate: float = 2e-4
    """Peak learning rate, reached after warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up from 0."""
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    epochs: float = 1.0
    """Passes over the training blocks (when max_steps is None)."""
    max_steps: int | None = None
    """Optimizer steps to run; None derives them from epochs."""
    max_epochs: float | None = None
    """With max_steps: the most passes over the training blocks, so a small repository is not trained over
    and over (fewer steps then run); None: no cap. Without max_steps, epochs decides and this is unused."""
    max_minutes: float | None = None
    """Wall-clock budget in minutes: training stops cleanly (and saves) when it runs out."""
    eval_every_steps: int | None = None
    """Steps between eval-loss measurements during training; None evaluates at the end only."""
    save_every_steps: int = 50
    """Steps between checkpoints (resumable after a crash or a killed pod)."""
    save_total_limit: int = 2
    """Checkpoints kept on disk; older ones are deleted."""
    checkpoint_uri: str | None = None
    """s3://bucket/prefix that receives each checkpoint as it is saved; None keeps them local only."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on GPUs that support it, fp32 elsewhere."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    max_memory_gb: float | None = None
    """Refuse to start when the estimated training memory exceeds this (GB); None skips the check."""
    seed: int = 0
    """Seed for data order, FIM sampling and adapter initialisation."""
    experiment: str = "repotune"
    """MLflow experiment name (tracking is on when MLFLOW_TRACKING_URI is set)."""

    def __post_init__(self) -> None:
        positive = ("micro_batch_size", "gradient_accumulation_steps", "save_every_steps", "save_total_limit")
        for name in positive:
            if getattr(self, name) < 1:
                raise RepotuneError(f"{name} must be at least 1")
        if self.learning_rate <= 0:
            raise RepotuneError("learning_rate must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise RepotuneError("max_steps must be at least 1 (or null to use epochs)")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise RepotuneError("max_minutes must be positive (or null for no budget)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise RepotuneError("warmup_ratio must be at least 0 and below 1")
        if self.epochs <= 0:
            raise RepotuneError("epochs must be positive")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise RepotuneError("max_epochs must be positive (or null for no cap)")
        if self.checkpoint_uri is not None and not self.checkpoint_uri.startswith("s3://"):
            raise RepotuneError("checkpoint_uri must be an s3:// URI (or null)")
        if self.serving is not None and self.serving.nodes != 1:
            raise RepotuneError("serving.nodes must be 1: each replica of the model is one pod")

    def serving_resources(self) -> ResourceSettings:
        """What one predictor replica asks for: ``serving``, else the training ``resources``."""
        return self.serving if self.serving is not None else self.resources


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RepotuneError(f"--set {dotted}: {key} is not a group of settings")
    node[leaf] = value


def load_recipe(path: Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe in ``path`` (defaults when None) with ``overrides`` (``"data.seq_len": 256``) applied."""
    data = load_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted, value)
    return from_dict(Recipe, data, f"recipe {path.name}" if path is not None else "recipe")


DEFAULT_RECIPE = "smollm2-135m-cpu"
"""The shipped recipe a pipeline is built with when none is named (`repotune run`, `compile`, `submit`)."""


def shipped_recipes_dir() -> Path:
    """The recipes of ``configs/``: inside the installed package, or beside ``src/`` in a checkout."""
    packaged = Path(__file__).resolve().parent.parent / "configs"
    checkout = Path(__file__).resolve().parents[3] / "configs"
    return packaged if packaged.is_dir() else checkout


def resolve_recipe(spec: str | None, overrides: dict[str, Any] | None = None) -> tuple[Recipe, str]:
    """A recipe from a shipped name (``tiny-cpu``), a YAML file path, or YAML text, with ``overrides``
    (``{"data.seq_len": 256}``) applied; also its YAML text. ``None`` is the default recipe.

    Every command that takes ``--recipe`` resolves it here. The text travels as a pipeline parameter,
    so a run on a cluster trains with exactly the recipe that was given here, whether or not the
    image ships it.
    """
    import yaml

    if spec is None:
        return load_recipe(None, overrides), ""
    shipped = shipped_recipes_dir() / f"{spec}.yaml"
    if "\n" not in spec and shipped.is_file():
        path: Path | None = shipped
    elif "\n" not in spec and spec.endswith((".yaml", ".yml")):
        path = Path(spec)
    else:
        path = None
    if path is not None:
        return load_recipe(path, overrides), path.read_text()
    try:
        data = yaml.safe_load(spec)
    except yaml.YAMLError as exc:
        raise RepotuneError(f"recipe is neither a shipped name, a .yaml path nor valid YAML: {exc}") from None
    if not isinstance(data, dict):
        names = ", ".join(sorted(p.stem for p in shipped_recipes_dir().glob("*.yaml")))
        raise RepotuneError(f"unknown recipe {spec!r}: give a .yaml path or one of {names}")
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted, value)
    return from_dict(Recipe, data, "recipe"), spec


def recipe_key(recipe: Recipe) -> str:
    """A short hash of every setting of ``recipe``: the same recipe and settings always give the same key
    (it names a model's place in object storage, so a cached pipeline step and its copy there agree)."""
    import hashlib
    import json

    from repotune.config import to_dict

    return hashlib.sha256(json.dumps(to_dict(recipe), sort_keys=True).encode()).hexdigest()[:12]


def recipe_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Recipe)]
