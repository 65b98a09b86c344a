"""The retrieval index ships inside the model folder, so that whatever carries the weights carries it.

The pipeline's train step copies the index of the repository at the training revision into
``MODEL/retrieval/`` before the model is published: the published folder KServe loads
(``storageUri``), the MLflow registry's copy and a Hub export all hold it beside the weights, and
``repotune serve`` finds it there. Whether serving uses it by default follows the arm that evaluation
chose (``repotune deploy`` passes ``--retrieval on|off``), or, where no one said, whether the model was
trained with retrieved context in its examples (``data.retrieval_rate`` of its recipe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repotune.retrieval.config import RetrievalConfig
from repotune.retrieval.index import MANIFEST_NAME, RetrievalIndex

log = logging.getLogger(__name__)

MODEL_INDEX_DIR = "retrieval"
"""The index's folder inside a model folder."""
TRAIN_SUMMARY = "train_summary.json"


def add_to_model(index_dir: Path, model_dir: Path) -> Path | None:
    """Copy the index folder ``index_dir`` into ``model_dir/retrieval/``; None (nothing copied) when
    ``index_dir`` holds no saved index."""
    from repotune.storage import copy_to

    if not (Path(index_dir) / MANIFEST_NAME).is_file():
        return None
    target = Path(model_dir) / MODEL_INDEX_DIR
    copy_to(index_dir, target)
    return target


def model_index(model_dir: Path) -> Path | None:
    """The index folder a model folder carries: ``MODEL/retrieval/``, or for an ``adapter/`` folder
    the one in the training output around it; None when there is none."""
    for candidate in _folders(Path(model_dir)):
        folder = candidate / MODEL_INDEX_DIR
        if (folder / MANIFEST_NAME).is_file():
            return folder
    return None


def trained_settings(model_dir: Path) -> tuple[bool, int | None]:
    """Whether the model at ``model_dir`` was trained with retrieved context in its examples, and the
    context budget it was trained with (tokens), from its ``train_summary.json`` recipe; ``(False,
    None)`` when the summary is absent or says nothing."""
    model_dir = Path(model_dir)
    for candidate in _folders(model_dir):
        path = candidate / TRAIN_SUMMARY
        if not path.is_file():
            continue
        try:
            summary: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring unreadable %s", path)
            return False, None
        return recipe_retrieval(summary)
    return False, None


def recipe_retrieval(summary: Any) -> tuple[bool, int | None]:
    """What a training summary's recipe says of retrieved context: whether training examples had it
    (``data.retrieval_rate`` above 0) and, if so, its budget in tokens (``data.retrieval_context_tokens``;
    None when unset or invalid). A model trained without context learned no budget, whatever the
    recipe's number says."""
    data = ((summary.get("recipe") if isinstance(summary, dict) else None) or {}).get("data") or {}
    rate, budget = data.get("retrieval_rate") or 0, data.get("retrieval_context_tokens")
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        return False, None
    valid = isinstance(budget, int) and not isinstance(budget, bool) and budget > 0
    return True, budget if valid else None


def _folders(model_dir: Path) -> tuple[Path, ...]:
    # An adapter folder sits in the training output (`MODEL/adapter/`), which holds the rest.
    return (model_dir, model_dir.parent) if (model_dir / "adapter_config.json").is_file() else (model_dir,)


def index_config(recipe: Any) -> RetrievalConfig:
    """The index settings a recipe (a dict, as ``train_summary.json`` records it) asks for: its
    ``data.retrieval_embedding_model``, resolved to a local folder, beside BM25; the defaults otherwise."""
    data = ((recipe if isinstance(recipe, dict) else {}) or {}).get("data") or {}
    spec = data.get("retrieval_embedding_model")
    if not spec:
        return RetrievalConfig()
    from repotune.models.resolve import resolve_embedding_model

    return RetrievalConfig(embedding_model=str(resolve_embedding_model(str(spec))))


def build_for_dataset(
    data_dir: Path,
    output: Path,
    revision: str | None = None,
    log: Callable[[str], None] = print,
    config: RetrievalConfig | None = None,
) -> RetrievalIndex:
    """Build and save to ``output`` the index of a clean folder's training records (``train.jsonl``):
    the repository at the training revision, without what evaluation holds out, so that the retrieval
    arms are scored on code the index never saw and serving gets the index that was scored."""
    from repotune.clean.layout import CleanLayout
    from repotune.errors import RepotuneError
    from repotune.records import read_records

    train = CleanLayout(Path(data_dir)).train
    if not train.is_file():
        raise RepotuneError(f"{data_dir} has no {train.name}; give the folder `repotune clean` wrote")
    index = RetrievalIndex.build(read_records(train), config, revision=revision or None, log=log)
    index.save(Path(output))
    return index


def evaluated_setting(evaluation_dir: Path, key: str) -> bool | None:
    """How the arm the evaluation in ``evaluation_dir`` chose is to be served (``metrics.json``'s
    ``decision``): ``key="retrieval"``, whether with retrieval; ``key="fim"``, whether a suffix makes a
    FIM prompt. None when it does not say (an evaluation that scored no retrieval arms or no FIM spans,
    or none at all)."""
    path = Path(evaluation_dir) / "metrics.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    decision = saved.get("decision") if isinstance(saved, dict) else None
    chosen = decision.get(key) if isinstance(decision, dict) else None
    return chosen if isinstance(chosen, bool) else None
