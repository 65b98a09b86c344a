"""The train stage: fine-tune the recipe's base model on a clean folder into a model folder.

    result = repotune.train.run(TrainConfig(data=Path("data"), output=Path("model"), recipe=recipe))
    result.eval_loss, result.base_eval_loss, result.output.adapter

In this process the recipe runs as :func:`repotune.train.finetune.run_training` (under torchrun too).
The pipeline's train step asks for a PyTorchJob (``pytorchjob``): then a recipe of more than one node
(``resources.nodes``) is launched on the Training Operator, and this process only waits for it and
brings its model back (:func:`repotune.train.cluster_job.train_as_pytorchjob`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repotune.atomic import prepare_output
from repotune.errors import RepotuneError
from repotune.train.layout import TrainLayout
from repotune.train.recipe import Recipe, recipe_key

_REMOTE = ("s3://", "minio://")


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    """Folder written by `repotune clean`."""
    output: Path
    """Folder for the model (merged; with LoRA its adapter too), its summary and card."""
    recipe: Recipe = field(default_factory=Recipe)
    """The training recipe, given as a shipped name (configs/NAME.yaml), a .yaml path or YAML text
    (default: the SmolLM2-135M CPU settings)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; tracking is off when unset."""
    checkpoints_under: str | None = None
    """Where the run's outputs are published: checkpoints go to PREFIX/<recipe key>/checkpoints as they
    are saved (an s3:// prefix, where the recipe names no checkpoint_uri: uploaded; a local folder:
    saved there), so that a retried pipeline step, whose output folder is a new one, resumes from
    there. The newest ``save_total_limit`` of them stay there after the run (older ones are deleted as
    newer ones arrive) until :meth:`TrainResult.drop_published_checkpoints`: the pipeline's train step
    calls it once the model is published."""
    resume_under: Path | None = None
    """Where checkpoints are saved when ``checkpoints_under`` is not a local folder: one that outlives
    ``output`` (`repotune run`'s work folder, where kfp.local gives every run a new output folder), at
    FOLDER/<recipe key>/checkpoints, so that a rerun resumes from them; without ``keep_checkpoints``
    they are removed once training has succeeded."""
    keep_checkpoints: bool = True
    """Keep the Trainer checkpoints after a successful run. The pipeline drops them: the model is what
    later steps and the registry need, and a large model's checkpoints would double what is stored."""
    pytorchjob: bool = False
    """Train a recipe of more than one node (resources.nodes) as a Kubeflow PyTorchJob, as the pipeline's
    train step does; otherwise train in this process (also under torchrun, and in each job process)."""
    data_uri: str | None = None
    """Where `data` is in object storage (s3://, or KFP's minio://): the PyTorchJob reads it there."""
    output_uri: str | None = None
    """Where `output` goes in object storage: the PyTorchJob writes its model beside it, or beside the
    checkpoints when `checkpoints_under` is an s3:// prefix."""

    def __post_init__(self) -> None:
        nodes = self.recipe.resources.nodes
        remote = all(uri is not None and uri.startswith(_REMOTE) for uri in (self.data_uri, self.output_uri))
        if self.pytorchjob and nodes > 1 and not remote:
            raise RepotuneError(
                f"the recipe asks for {nodes} nodes: that runs as a Kubeflow PyTorchJob, which reads its "
                "data from object storage, so run the pipeline on a cluster (`repotune submit`)"
            )


@dataclass(frozen=True)
class TrainResult:
    """What a training run reports (all of it is in ``output.summary``)."""

    output: TrainLayout
    base_model: str
    method: str
    recipe_key: str
    """Short hash of the recipe as trained (see ``repotune.train.recipe.recipe_key``)."""
    steps: int
    train_loss: float | None
    eval_loss: float | None
    """Held-out loss of the tuned model; None without held-out data."""
    base_eval_loss: float | None
    """Held-out loss of the base model before training; None without held-out data."""
    tokens_per_second: float | None
    published_checkpoints: str | None = None
    """Where the run's checkpoints were kept beside its published outputs (``checkpoints_under``: an
    s3:// prefix or a local folder); None when there is no such place, or the recipe named its own
    ``checkpoint_uri``, which may hold other runs' checkpoints and is left to its owner."""

    @classmethod
    def from_summary(
        cls, output: TrainLayout, summary: dict[str, Any], key: str, published_checkpoints: str | None = None
    ) -> TrainResult:
        return cls(
            published_checkpoints=published_checkpoints,
            output=output,
            base_model=summary["base_model"],
            method=summary["method"],
            recipe_key=key,
            steps=summary["steps"],
            train_loss=summary.get("train_loss"),
            eval_loss=summary.get("eval_loss"),
            base_eval_loss=summary.get("base_eval_loss"),
            tokens_per_second=summary.get("tokens_per_second"),
        )

    @property
    def metrics(self) -> dict[str, float]:
        """The numbers the KFP UI shows for the step (those that were measured)."""
        values = {
            "steps": self.steps,
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
            "base_eval_loss": self.base_eval_loss,
            "tokens_per_second": self.tokens_per_second,
        }
        return {name: float(value) for name, value in values.items() if value is not None}

    def drop_published_checkpoints(self, log: Callable[[str], None] = print) -> None:
        """Deletes the checkpoints kept beside the published outputs, once the model itself is
        published: they were there to resume a failed run, and a full fine-tuning checkpoint (weights
        and both AdamW moments) is three times the size of the model. Each checkpoint in a store goes
        marker first (an interrupted delete leaves what reads as an unfinished upload, never resumed
        from). A delete that fails is a warning: the model is published, and that is what counts."""
        where = self.published_checkpoints
        if where is None:
            return
        if where.startswith("s3://"):
            from repotune.train.checkpoint_sync import remove_checkpoints

            try:
                removed = remove_checkpoints(where)
            except RepotuneError as exc:
                log(f"warning: the run's checkpoints were not deleted from {where}: {exc}")
                return
        else:
            from repotune.train.checkpoints import checkpoint_folders

            removed = [path.name for path in checkpoint_folders(Path(where))]
            shutil.rmtree(where, ignore_errors=True)
        if removed:
            log(f"deleted {', '.join(removed)} from {where}: the model is published")


def run(config: TrainConfig, *, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``config.recipe`` on ``config.data`` into ``config.output``.

    Raises ``repotune.storage.PublishError`` after the model is written when the recipe's
    ``checkpoint_uri`` (or the one ``checkpoints_under`` gives) did not receive the run's newest
    checkpoint; ``output.summary`` then lists every failed upload under ``publish``.
    """
    recipe, key = config.recipe, recipe_key(config.recipe)
    under = config.checkpoints_under
    published_checkpoints = None
    if under is not None and under.startswith("s3://") and recipe.checkpoint_uri is None:
        published_checkpoints = f"{under.rstrip('/')}/{key}/checkpoints"
        recipe = dataclasses.replace(recipe, checkpoint_uri=published_checkpoints)
    layout = TrainLayout(config.output)
    ours = (layout.summary.name, layout.checkpoints.name, layout.token_cache.name)
    prepare_output(config.output, ours, "model (or checkpoints of one)", written=(layout.model_card.name,))
    in_process = not (config.pytorchjob and recipe.resources.nodes > 1)
    kept = _kept_checkpoints(config, key) if in_process else None
    if kept is not None:
        _link_checkpoints(layout.checkpoints, kept, log)
    try:
        summary = _train(config, recipe, key, layout, log)
    finally:
        if layout.checkpoints.is_symlink():
            layout.checkpoints.unlink()  # the model folder holds no link to a folder outside it
    published = kept is not None and config.checkpoints_under is not None
    if published:
        published_checkpoints = str(kept)
    if kept is not None and not published and not config.keep_checkpoints:
        shutil.rmtree(kept, ignore_errors=True)
    if not config.keep_checkpoints:
        shutil.rmtree(layout.checkpoints, ignore_errors=True)
    from repotune.train.finetune import raise_if_unpublished

    raise_if_unpublished(summary, config.output)
    return TrainResult.from_summary(layout, summary, key, published_checkpoints)


def _kept_checkpoints(config: TrainConfig, key: str) -> Path | None:
    """The local folder that outlives ``config.output`` where the checkpoints go, if any."""
    under = config.checkpoints_under
    if under is not None and "://" not in under:
        return Path(under) / key / "checkpoints"
    if config.resume_under is not None and (under is None or not under.startswith("s3://")):
        return Path(config.resume_under) / key / "checkpoints"
    return None


def _link_checkpoints(checkpoints: Path, kept: Path, log: Callable[[str], None]) -> None:
    """Has the Trainer save into ``kept`` (``checkpoints`` becomes a link to it), and says so when an
    earlier run left a checkpoint there to resume from. A real ``checkpoints`` folder (the same output
    folder trained into again) is left as it is: training resumes from it."""
    if checkpoints.exists() and not checkpoints.is_symlink():
        return
    from repotune.train.checkpoints import latest_complete

    kept.mkdir(parents=True, exist_ok=True)
    checkpoints.unlink(missing_ok=True)
    checkpoints.symlink_to(kept.resolve(), target_is_directory=True)
    latest = latest_complete(kept, lambda _reason: None, move_aside=False)
    if latest is not None:
        log(f"resuming from {latest.name} of an earlier run ({kept})")


def _train(
    config: TrainConfig, recipe: Recipe, key: str, layout: TrainLayout, log: Callable[[str], None]
) -> dict[str, Any]:
    under = config.checkpoints_under
    if config.pytorchjob and recipe.resources.nodes > 1:
        from repotune.train.cluster_job import train_as_pytorchjob

        assert config.data_uri is not None and config.output_uri is not None  # checked on construction
        job_output = config.output_uri
        if under is not None and under.startswith("s3://"):
            # The job's pods hold the keys of the published outputs' store (repotune-s3), not of KFP's
            # artifact store: the job writes beside the run's published outputs.
            job_output = f"{under.rstrip('/')}/{key}/model"
        train_as_pytorchjob(
            recipe,
            key,
            config.data_uri,
            job_output,
            config.output,
            tracking_uri=config.tracking_uri,
            log=log,
        )
        return json.loads(layout.summary.read_text())
    from repotune.train.finetune import run_training

    return run_training(config.data, config.output, recipe, tracking_uri=config.tracking_uri, log=log)
