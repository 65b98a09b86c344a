"""What every process of a multi-node training job runs: fetch the data, train, upload from rank 0.

A Kubeflow PyTorchJob (see :mod:`repotune.train.cluster_job`) starts it under torchrun on each node::

    torchrun --nnodes=N --nproc_per_node=P --node_rank=$(RANK) --master_addr=$(MASTER_ADDR) \\
        --master_port=$(MASTER_PORT) -m repotune.train.cluster_entry DATA_URI OUTPUT_URI \\
        --recipe-json '{"base_model": ...}' --work-dir /workspace/work

DATA_URI is a `repotune clean` folder (``s3://`` prefix with its ``_COMPLETE`` marker, or a local path);
OUTPUT_URI receives the trained model (adapter, merged model, tokenizer, ``train_summary.json``)
without the Trainer checkpoints, with its ``_COMPLETE`` marker written last. Object-store credentials
come from the environment (see :mod:`repotune.storage`), MLflow's from ``MLFLOW_TRACKING_*``.
Exit status: 0 on success, 2 for a problem worded for the user (``error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from repotune import storage
from repotune.config import from_dict
from repotune.errors import RepotuneError
from repotune.train.finetune import Distributed, raise_if_unpublished, run_training
from repotune.train.layout import TrainLayout
from repotune.train.recipe import Recipe, load_recipe

PROG = "python -m repotune.train.cluster_entry"


def run_cluster_training(
    data_uri: str,
    output_uri: str,
    recipe: Recipe,
    *,
    work_dir: Path,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains on ``data_uri`` into ``work_dir/model``; the global rank 0 then copies it to ``output_uri``.

    Each process fetches the data into its own folder (``data-LOCAL_RANK``): a cleaned dataset is
    JSONL text, far smaller than the model, and separate folders need no locking between the
    processes of one node. Returns the training summary (the same on every rank).
    """
    dist = Distributed.from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    say = log if dist.is_main else (lambda _message: None)
    data_dir = storage.fetch(data_uri, work_dir / f"data-{local_rank}")
    output = work_dir / "model"
    summary = run_training(data_dir, output, recipe, tracking_uri=tracking_uri, log=log)
    if dist.is_main:
        export = _export_tree(output, work_dir / "export")
        storage.copy_to(export, output_uri)
        say(f"uploaded the model to {output_uri}")
    # after the model's upload: a checkpoint that did not reach checkpoint_uri costs the exit status only
    raise_if_unpublished(summary, output)
    return summary


def _export_tree(output: Path, export: Path) -> Path:
    """``output`` as hard links (no second copy of the weights on disk), without its scratch: checkpoints
    hold optimizer state (about 3x the adapter's size for LoRA, more for full fine-tuning) and are
    mirrored by `checkpoint_uri` when wanted; the token cache is only for a restart on the same disk."""
    shutil.rmtree(export, ignore_errors=True)
    scratch = {path.name for path in TrainLayout(output).scratch}

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or one without hard links
            shutil.copy2(src, dst)

    shutil.copytree(
        output,
        export,
        ignore=lambda folder, names: [n for n in names if Path(folder) == output and n in scratch],
        copy_function=link,
    )
    return export


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune on a cleaned dataset under torchrun and upload the model from rank 0.",
    )
    parser.add_argument("data_uri", metavar="DATA_URI", help="`repotune clean` output: s3:// or a folder.")
    parser.add_argument("output_uri", metavar="OUTPUT_URI", help="Where the model goes: s3:// or a folder.")
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument(
        "--recipe-json", help="The recipe as one JSON object (what render_pytorchjob passes)."
    )
    recipe.add_argument("--recipe", help="A recipe YAML file: a local path or an s3:// URI.")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("repotune-work"),
        help="Scratch folder for the data and the model (default: ./repotune-work).",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI); tracking is off when unset.",
    )
    return parser


def _recipe(args: argparse.Namespace) -> Recipe:
    if args.recipe_json is not None:
        try:
            data = json.loads(args.recipe_json)
        except ValueError as exc:
            raise RepotuneError(f"--recipe-json is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RepotuneError("--recipe-json must be a JSON object of recipe settings")
        return from_dict(Recipe, data, "--recipe-json")
    path = Path(args.recipe)
    if storage.is_s3_uri(args.recipe):
        path = storage.fetch(args.recipe, args.work_dir / "recipe.yaml")
    return load_recipe(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        recipe = _recipe(args)
        run_cluster_training(
            args.data_uri,
            args.output_uri,
            recipe,
            work_dir=args.work_dir,
            tracking_uri=args.tracking_uri,
        )
    except RepotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
