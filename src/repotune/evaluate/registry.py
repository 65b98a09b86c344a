"""The MLflow model registry side of "evaluate and promote": candidates, the champion, rollback.

Every trained candidate becomes a new version of one registered model; the ``champion`` alias marks
the version that is deployed. Evaluation reads the champion's metrics back from its tags, so a new
candidate is compared with it without re-scoring, and downloads its weights from ``files_uri``::

    registry = Registry(os.environ["MLFLOW_TRACKING_URI"], "repotune-myproject")
    registry.check()  # RepotuneError now, naming the URI, if the registry cannot be reached
    tracker.log_model(model_dir)  # inside the run: an MLflow model named "model"
    version = registry.register_candidate(
        run_id, "model", {SOURCE_TAG: "github:org/repo", COMMIT_TAG: sha}, metrics=candidate
    )
    champion = registry.champion()
    decision = should_promote(candidate, base, champion.metrics if champion else None)
    registry.record_decision(version, decision)
    if decision.promote:
        registry.promote(version, decision)

A version registered from a logged MLflow model (``Tracker.log_model``) has the source
``models:/<model id>``, as ``mlflow.register_model`` gives it, and loads with
``mlflow.pyfunc.load_model("models:/NAME@champion")``; its
Hugging Face folder (what KServe deploys and evaluation scores) lies at ``files_uri``, the artifact
location plus ``repotune.weights_path`` (``artifacts/model``). A version registered from a bare
folder of run artifacts (before models were logged as MLflow models) is that folder.

Tag layout. On each model version:

- ``repotune.source``, ``repotune.commit``, ``repotune.dataset_hash``, ``repotune.recipe_hash`` (and any
  other tags the caller passes): provenance, as given to ``register_candidate``.
- ``repotune.weights_path``: for a logged MLflow model, the Hugging Face folder's path inside it.
- ``metric.<name>.value``, ``.n``, ``.higher_is_better`` (``true``/``false``), ``.confidence`` and,
  when the metric has a confidence interval, ``.ci_low`` and ``.ci_high``. Floats are written with
  ``repr`` so they read back bit for bit; no CI means no ``ci_*`` tags.
- ``repotune.decision`` (``promote`` or ``reject``), ``repotune.decision.reasons`` (one reason a line,
  truncated to ``MAX_TAG_VALUE_LENGTH``) and ``repotune.decision.time`` (ISO 8601, UTC).
- ``repotune.arm`` (``candidate`` or ``candidate_retrieval``) and ``repotune.retrieval`` (``true`` or
  ``false``): the arm the decision chose (or, for a rejected version, found best). On the champion,
  ``repotune.retrieval`` tells deploy and serving whether to put retrieved context in front of prompts.
- ``repotune.previous_champion``: on a promoted version, the version the alias left (absent for the
  first champion).

On the registered model, ``repotune.champion_history`` is a JSON list, oldest first, of
``{"version": "2", "time": "2026-01-01T00:00:00+00:00"}`` for each promotion and
``{"version": "1", "time": ..., "rollback_from": "2"}`` for each rollback. Earlier champions stay
registered (nothing here deletes a version), so the alias can move back to them.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError
from repotune.evaluate.decide import Decision
from repotune.evaluate.metrics import Metric
from repotune.tracking import WEIGHTS_PATH_TAG, mlflow_env_defaults, short_reason

CHAMPION_ALIAS = "champion"

SOURCE_TAG = "repotune.source"
"""The source repository the candidate was trained on, e.g. ``github:org/repo``."""
COMMIT_TAG = "repotune.commit"
"""The commit SHA of that repository."""
ROOT_COMMIT_TAG = "repotune.root_commit"
"""The first commit of that repository's main line: the same in each of its clones (the project)."""
DATASET_HASH_TAG = "repotune.dataset_hash"
"""A hash of the cleaned training and eval data."""
RECIPE_HASH_TAG = "repotune.recipe_hash"
"""A hash of the training recipe."""
DECISION_TAG = "repotune.decision"
DECISION_REASONS_TAG = "repotune.decision.reasons"
DECISION_TIME_TAG = "repotune.decision.time"
ARM_TAG = "repotune.arm"
"""The arm the decision chose for the version: ``candidate`` or ``candidate_retrieval``."""
RETRIEVAL_TAG = "repotune.retrieval"
"""``true`` when the version is to be served with retrieval (its chosen arm uses it), else ``false``."""
FIM_TAG = "repotune.fim"
"""``true`` when the version fills gaps (requests with a suffix) better with FIM prompts than from the
prefix alone (``Decision.fim``), ``false`` when not; absent when not measured."""
PREVIOUS_CHAMPION_TAG = "repotune.previous_champion"
HISTORY_TAG = "repotune.champion_history"
METRIC_TAG_PREFIX = "metric."
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
"""MLflow's tag on a logged model: the registered versions made from it (a JSON list)."""

# MLflow's API accepts registry tag values up to 100,000 characters, but its SQL stores keep registered
# model tag values (and model version tags, before a recent schema migration) in VARCHAR(5000):
# MySQL and PostgreSQL backends would reject longer ones. Stay under the smaller limit.
MAX_TAG_VALUE_LENGTH = 5000
MAX_TAG_KEY_LENGTH = 250

# MLflow's rule for tag keys on POSIX (mlflow.utils.validation.validate_param_and_metric_name).
_TAG_KEY = re.compile(r"^[/\w.\- :]+$")
_RUN_ID = re.compile(r"^[\w-]+$")
_TRUE, _FALSE = "true", "false"


def check_same_project(
    champion: ChampionInfo | None,
    source: str | None,
    model_name: str,
    root_commit: str | None = None,
    *,
    promoted: bool = True,
) -> None:
    """Refuses to weigh a candidate against, and perhaps replace, a champion of another project, or
    to register it beside another project's versions (``Registry.holder``: the champion, else, not
    ``promoted``, the newest version).

    The registered model name is the project's: by default every run is ``repotune``, so a second
    project's run in the same MLflow store would be scored against the first's champion and, promoted,
    take its alias (and its deployment). Projects are told apart by their repositories' root commits
    (``ROOT_COMMIT_TAG``) when both runs know theirs: a checkout in any folder, and a clone of it from
    any URL, is the same project. Otherwise by their sources' names (``source_slug``: the repository or
    folder name), as the object-store prefixes are.
    """
    from repotune.sources.slug import source_slug

    if champion is None or not source or not (theirs := champion.tags.get(SOURCE_TAG)):
        return
    if root_commit and (their_root := champion.tags.get(ROOT_COMMIT_TAG)):
        same = their_root == root_commit
    else:
        first = [part.split(" + ", 1)[0] for part in (theirs, source)]
        same = source_slug(first[0]) == source_slug(first[1])
    if not same:
        raise RepotuneError(
            f"{'the champion' if promoted else 'the newest version (none is champion yet)'} of "
            f"{model_name} (version {champion.version}) was trained on {theirs}, and this "
            f"candidate on {source}: a registered model holds one project's versions, so give this "
            f"project its own --model-name ({model_name} is left as it is)"
        )


def decision_tags(decision: Decision) -> dict[str, str]:
    """The verdict, its reasons, the arm it chose and how that arm fills gaps, as tags: on the
    registered version, and on the evaluation's run, where the MLflow UI can filter runs by them."""
    tags = {
        DECISION_TAG: "promote" if decision.promote else "reject",
        DECISION_REASONS_TAG: _truncate("\n".join(decision.reasons)),
    }
    if decision.arm is not None:
        tags[ARM_TAG] = decision.arm.key
        tags[RETRIEVAL_TAG] = _TRUE if decision.arm.retrieval else _FALSE
    if decision.fim is not None:
        tags[FIM_TAG] = _TRUE if decision.fim else _FALSE
    return tags


def registered_retrieval(tags: Mapping[str, str]) -> bool | None:
    """Whether a version's tags say it is served with retrieval (``RETRIEVAL_TAG``); None when they do
    not say."""
    return _flag(tags, RETRIEVAL_TAG)


def registered_fim(tags: Mapping[str, str]) -> bool | None:
    """Whether a version's tags say it answers a suffix with FIM prompts (``FIM_TAG``); None when they
    do not say."""
    return _flag(tags, FIM_TAG)


def _flag(tags: Mapping[str, str], tag: str) -> bool | None:
    return {_TRUE: True, _FALSE: False}.get(tags.get(tag, ""))


@dataclass(frozen=True)
class ChampionInfo:
    """The registered version behind the ``champion`` alias."""

    model_name: str
    version: str
    source: str
    """The version's source as registered: ``models:/<model id>`` for a logged MLflow model, else the
    artifact URI of a bare model folder."""
    files_uri: str
    """Artifact URI of the Hugging Face model folder (config.json, safetensors, tokenizer):
    ``mlflow-artifacts:/...`` behind a proxying server, or ``s3://...``. ``Registry.download`` or
    ``mlflow.artifacts.download_artifacts`` fetches it; ``deploy.uris`` maps it to S3 for KServe."""
    run_id: str | None
    """The MLflow run that trained it, when known."""
    tags: Mapping[str, str]
    """All tags of the version, metric tags included."""
    metrics: Mapping[str, Metric]
    """Its metrics, read back from the ``metric.*`` tags, keyed by name as ``should_promote`` expects."""

    @property
    def model_uri(self) -> str:
        """``models:/NAME/VERSION``: pins this version even after the alias moves on."""
        return f"models:/{self.model_name}/{self.version}"


@dataclass(frozen=True)
class ChampionChange:
    """One move of the ``champion`` alias."""

    version: str
    """The version the alias moved to."""
    time: str
    """When, ISO 8601 in UTC."""
    rollback_from: str | None = None
    """The version the alias moved away from, for a rollback; None for a promotion."""


class Registry:
    """One registered model in the MLflow model registry at ``tracking_uri`` (an ``http(s)://``
    server, or a local store such as ``sqlite:///mlflow.db``).

    Sets the same short MLflow HTTP retry and timeout defaults as ``MlflowTracker``. Moving the alias
    reads and rewrites the history tag: two processes promoting the same model at the same moment
    could lose one history entry, so promote from one pipeline step at a time.
    """

    def __init__(self, tracking_uri: str, model_name: str):
        if not tracking_uri:
            raise ValueError("Registry needs a tracking URI (MLFLOW_TRACKING_URI)")
        if not model_name or "'" in model_name or '"' in model_name:
            # The name goes into MLflow search filters, which have no escaping for quotes.
            raise RepotuneError(f"registered model name {model_name!r} must be non-empty and without quotes")
        mlflow_env_defaults()
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def check(self) -> None:
        """Raise RepotuneError, naming the URI, when the registry cannot be reached."""
        try:
            self._client.search_registered_models(max_results=1)
        except Exception as err:
            raise RepotuneError(
                f"cannot reach the MLflow model registry at {self.tracking_uri} ({short_reason(err)}); start "
                "the server or fix MLFLOW_TRACKING_URI"
            ) from err

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Turn MLflow's errors into a RepotuneError that says what was being done, and where."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as err:
            raise RepotuneError(
                f"MLflow registry at {self.tracking_uri}: {what} failed ({short_reason(err)})"
            ) from err

    def register_candidate(
        self,
        run_id: str,
        artifact_path: str,
        tags: Mapping[str, str],
        *,
        metrics: Mapping[str, Metric] | None = None,
    ) -> str:
        """Register the model folder ``artifact_path`` of run ``run_id`` as a new version (creating the
        registered model on first use) with ``tags`` and ``metric_tags(metrics)``; return the version.

        Idempotent: a retried pipeline step finds the version it registered before (same run, same
        folder), updates its tags and returns it rather than registering a duplicate.
        """
        if not _RUN_ID.match(run_id):
            raise ValueError(f"not an MLflow run id: {run_id!r}")
        all_tags = {**_checked_tags(tags), **metric_tags(metrics or {})}
        with self._calling(f"registering run {run_id} ({artifact_path}) as a version of {self.model_name}"):
            run = self._client.get_run(run_id)
            model = self._logged_model(run, artifact_path)
            if model is not None:
                source, model_id = f"models:/{model.model_id}", model.model_id
                if WEIGHTS_PATH_TAG in (model.tags or {}):
                    all_tags[WEIGHTS_PATH_TAG] = model.tags[WEIGHTS_PATH_TAG]
            elif self._client.list_artifacts(run_id, artifact_path):
                source, model_id = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path.strip('/')}", None
            else:
                raise RepotuneError(
                    f"run {run_id} has no logged model named {artifact_path!r} and no artifacts under it at "
                    f"{self.tracking_uri}; log the model (Tracker.log_model) before registering it"
                )
            self._ensure_registered_model()
            for existing in self._client.search_model_versions(f"run_id = '{run_id}'"):
                if existing.name == self.model_name and existing.source == source:
                    for key, value in all_tags.items():
                        self._client.set_model_version_tag(self.model_name, existing.version, key, value)
                    return str(existing.version)
            with _use_tracking_uri(self.tracking_uri):
                created = self._client.create_model_version(
                    self.model_name, source, run_id=run_id, tags=all_tags, model_id=model_id
                )
            if model is not None:
                # As mlflow.register_model does: the logged model lists the versions made from it.
                versions = json.loads((model.tags or {}).get(MODEL_VERSIONS_TAG) or "[]")
                versions.append({"name": self.model_name, "version": str(created.version)})
                self._client.set_logged_model_tags(model.model_id, {MODEL_VERSIONS_TAG: json.dumps(versions)})
            return str(created.version)

    def _logged_model(self, run: Any, name: str) -> Any | None:
        """The newest ready MLflow model named ``name`` among the run's outputs, or None."""
        from mlflow.entities import LoggedModelStatus

        outputs = run.outputs.model_outputs if run.outputs is not None else []
        models = [self._client.get_logged_model(output.model_id) for output in outputs]
        ready = [m for m in models if m.name == name and m.status == LoggedModelStatus.READY]
        return max(ready, key=lambda m: m.creation_timestamp) if ready else None

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        if self._registered_model() is not None:
            return
        try:
            self._client.create_registered_model(self.model_name)
        except MlflowException as err:
            # A parallel pipeline run created it between our two calls.
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _registered_model(self) -> Any | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_registered_model(self.model_name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _state(self) -> tuple[str | None, list[ChampionChange]]:
        """The version behind the alias and the history, from one read of the registered model."""
        model = self._registered_model()
        if model is None:
            return None, []
        version = (model.aliases or {}).get(CHAMPION_ALIAS)
        return (None if version is None else str(version)), self._parse_history(model)

    def champion(self) -> ChampionInfo | None:
        """The version behind the ``champion`` alias, or None when there is none (yet)."""
        with self._calling(f"reading the champion of {self.model_name}"):
            version, _ = self._state()
        return None if version is None else self.version_info(version)

    def holder(self) -> tuple[ChampionInfo, bool] | None:
        """The version that says whose project this registered model is, and whether it is the
        champion: the champion, else (nothing promoted yet) the newest version; None when none is
        registered."""
        champion = self.champion()
        if champion is not None:
            return champion, True
        with self._calling(f"listing the versions of {self.model_name}"):
            versions = self._client.search_model_versions(f"name = '{self.model_name}'")
        if not versions:
            return None
        newest = max(int(found.version) for found in versions)
        return self.version_info(str(newest)), False

    def version_info(self, version: str) -> ChampionInfo:
        """What ``champion()`` says of the champion, for any registered ``version``."""
        with self._calling(f"reading {self.model_name} version {version}"):
            found = self._client.get_model_version(self.model_name, version)
            tags = dict(found.tags or {})
            # The registry's download location: for a `models:/<id>` source, the logged model's
            # artifact location; for a folder source, the folder.
            location = self._client.get_model_version_download_uri(self.model_name, version)
        try:
            metrics = metrics_from_tags(tags)
        except RepotuneError as err:
            raise RepotuneError(f"{self.model_name} version {version} at {self.tracking_uri}: {err}") from err
        weights = tags.get(WEIGHTS_PATH_TAG, "").strip("/")
        return ChampionInfo(
            model_name=self.model_name,
            version=str(version),
            source=found.source,
            files_uri=f"{location.rstrip('/')}/{weights}" if weights else location,
            run_id=found.run_id or None,
            tags=tags,
            metrics=metrics,
        )

    def record_decision(self, version: str, decision: Decision) -> None:
        """Store the verdict, its reasons and the arm it chose on ``version``: call it for every candidate
        evaluated."""
        tags = {**decision_tags(decision), DECISION_TIME_TAG: _now()}
        with self._calling(f"recording the decision on {self.model_name} version {version}"):
            for key, value in tags.items():
                self._client.set_model_version_tag(self.model_name, version, key, value)

    def promote(self, version: str, decision: Decision) -> None:
        """Move the ``champion`` alias to ``version``, which ``decision`` must allow.

        Records the decision, tags ``version`` with the champion it replaces and appends to the history.
        Promoting the current champion again changes nothing but completes a history entry that an
        interrupted earlier call left out.
        """
        if not decision.promote:
            raise ValueError(
                f"promote() called for {self.model_name} version {version} with a decision that refuses "
                f"it: {decision.reasons[0] if decision.reasons else 'no reason given'}"
            )
        self.record_decision(version, decision)
        with self._calling(f"promoting {self.model_name} version {version}"):
            self._client.get_model_version(self.model_name, version)  # a clear error for a wrong version
            previous, history = self._state()
            if previous != version:
                if previous is not None:
                    self._client.set_model_version_tag(
                        self.model_name, version, PREVIOUS_CHAMPION_TAG, previous
                    )
                # The alias first, then the record of it: if this process dies in between, the alias
                # is right and rollback() notices the incomplete history instead of acting on it.
                self._client.set_registered_model_alias(self.model_name, CHAMPION_ALIAS, version)
            if not history or history[-1].version != version:
                self._write_history([*history, ChampionChange(version, _now())])

    def rollback(self) -> str:
        """Move the ``champion`` alias back to the champion before the current one, and return that
        version. Repeated rollbacks walk further back through the promotions in the history."""
        with self._calling(f"rolling back the champion of {self.model_name}"):
            current, history = self._state()
            if current is None:
                raise RepotuneError(f"{self.model_name} at {self.tracking_uri} has no champion to roll back")
            stack = champion_stack(history)
            if not stack or stack[-1] != current:
                raise RepotuneError(
                    f"the {CHAMPION_ALIAS!r} alias of {self.model_name} points at version {current}, but "
                    f"{HISTORY_TAG} ends at {stack[-1] if stack else 'nothing'}: the alias was moved "
                    "outside repotune; set it by hand (MlflowClient.set_registered_model_alias)"
                )
            if len(stack) < 2:
                raise RepotuneError(
                    f"{self.model_name} version {current} is the first champion in {HISTORY_TAG}; there is "
                    "no earlier champion to roll back to"
                )
            target = stack[-2]
            self._client.get_model_version(self.model_name, target)  # deleted since? then say so
            self._client.set_registered_model_alias(self.model_name, CHAMPION_ALIAS, target)
            self._write_history([*history, ChampionChange(target, _now(), rollback_from=current)])
        return target

    def history(self) -> list[ChampionChange]:
        """Every move of the ``champion`` alias made through this class, oldest first."""
        with self._calling(f"reading the champion history of {self.model_name}"):
            return self._state()[1]

    def _parse_history(self, model: Any) -> list[ChampionChange]:
        raw = (model.tags or {}).get(HISTORY_TAG)
        if not raw:
            return []
        try:
            return [ChampionChange(**entry) for entry in json.loads(raw)]
        except (ValueError, TypeError) as err:
            raise RepotuneError(
                f"tag {HISTORY_TAG} of {self.model_name} at {self.tracking_uri} is not a JSON list of "
                f"{{version, time[, rollback_from]}} objects ({err}); fix or delete it"
            ) from err

    def _write_history(self, history: list[ChampionChange]) -> None:
        entries = [
            {"version": c.version, "time": c.time}
            | ({} if c.rollback_from is None else {"rollback_from": c.rollback_from})
            for c in history
        ]
        text = json.dumps(entries)
        # Drop the oldest entries rather than cut the JSON: about 100 moves fit in the tag.
        while len(text) > MAX_TAG_VALUE_LENGTH and len(entries) > 1:
            entries = entries[1:]
            text = json.dumps(entries)
        self._client.set_registered_model_tag(self.model_name, HISTORY_TAG, text)

    def download(self, version: str, dst_dir: Path) -> Path:
        """Download the Hugging Face model folder of ``version`` (``files_uri``, not the MLflow model
        around it) into ``dst_dir``; return the folder's local path."""
        import mlflow.artifacts

        dst_dir = Path(dst_dir)
        dst_dir.mkdir(parents=True, exist_ok=True)
        files_uri = self.version_info(version).files_uri
        with self._calling(f"downloading {self.model_name} version {version}"):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=files_uri, dst_path=str(dst_dir), tracking_uri=self.tracking_uri
            )
        return Path(local)


@contextlib.contextmanager
def _use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's SQL registry store resolves a ``models:/<model id>`` source through the process-wide
    tracking URI rather than its own (mlflow 3.x), so registering into a local ``sqlite:///`` registry
    that is not also ``MLFLOW_TRACKING_URI`` fails without this. A server resolves it on its side."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use

    with use(uri):
        yield


def champion_stack(history: list[ChampionChange]) -> list[str]:
    """The champions a rollback can return to, oldest first, the current one last: a promotion pushes
    its version, a rollback pops. Entries dropped from a long history leave the stack shorter, never
    wrong at its top."""
    stack: list[str] = []
    for change in history:
        if change.rollback_from is not None and stack:
            stack.pop()
        if not stack or stack[-1] != change.version:
            stack.append(change.version)
    return stack


def metric_tags(metrics: Mapping[str, Metric]) -> dict[str, str]:
    """The ``metric.<name>.*`` tags that ``metrics_from_tags`` reads back into equal ``Metric`` values."""
    tags: dict[str, str] = {}
    for name, metric in metrics.items():
        if name != metric.name:
            raise ValueError(f"metric stored under {name!r} is named {metric.name!r}")
        prefix = f"{METRIC_TAG_PREFIX}{name}."
        _check_key(prefix + "higher_is_better")
        tags[prefix + "value"] = repr(metric.value)
        tags[prefix + "n"] = str(metric.n)
        tags[prefix + "higher_is_better"] = _TRUE if metric.higher_is_better else _FALSE
        tags[prefix + "confidence"] = repr(metric.confidence)
        if metric.ci_low is not None and metric.ci_high is not None:
            tags[prefix + "ci_low"] = repr(metric.ci_low)
            tags[prefix + "ci_high"] = repr(metric.ci_high)
    return tags


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, Metric]:
    """Every metric stored by ``metric_tags`` among ``tags`` (other tags are ignored)."""
    names = [
        key[len(METRIC_TAG_PREFIX) : -len(".value")]
        for key in tags
        if key.startswith(METRIC_TAG_PREFIX) and key.endswith(".value")
    ]
    metrics: dict[str, Metric] = {}
    for name in sorted(names):
        prefix = f"{METRIC_TAG_PREFIX}{name}."
        try:
            higher = tags[prefix + "higher_is_better"]
            if higher not in (_TRUE, _FALSE):
                raise ValueError(f"{prefix}higher_is_better is {higher!r}, not {_TRUE!r} or {_FALSE!r}")
            low, high = tags.get(prefix + "ci_low"), tags.get(prefix + "ci_high")
            metrics[name] = Metric(
                name=name,
                value=_float(tags[prefix + "value"]),
                n=int(tags[prefix + "n"]),
                ci_low=None if low is None else _float(low),
                ci_high=None if high is None else _float(high),
                higher_is_better=higher == _TRUE,
                confidence=_float(tags.get(prefix + "confidence", "0.95")),
            )
        except KeyError as err:
            raise RepotuneError(f"metric {name!r} lacks its tag {err.args[0]}") from err
        except ValueError as err:
            raise RepotuneError(f"metric {name!r} has a malformed tag: {err}") from err
    return metrics


def _float(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError(f"{text!r} is not a number")
    return value


def _check_key(key: str) -> None:
    # MLflow also refuses keys that are not normalized relative paths (`a//b`, `../a`, `a/`).
    bad_path = posixpath.normpath(key) != key or key.startswith(("/", ".."))
    if len(key) > MAX_TAG_KEY_LENGTH or not _TAG_KEY.match(key) or bad_path:
        raise RepotuneError(
            f"{key!r} is not a valid MLflow tag key: at most {MAX_TAG_KEY_LENGTH} characters of letters, "
            "digits, '_', '-', '.', ' ', '/' and ':'"
        )


def _checked_tags(tags: Mapping[str, str]) -> dict[str, str]:
    for key in tags:
        _check_key(key)
    return {key: _truncate(str(value)) for key, value in tags.items()}


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_TAG_VALUE_LENGTH else text[: MAX_TAG_VALUE_LENGTH - 3] + "..."


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
