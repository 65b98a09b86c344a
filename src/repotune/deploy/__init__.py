"""The deploy stage: ``run(DeployConfig) -> DeployResult`` serves a model as a KServe InferenceService.

    settings = DeploySettings(name="myproject-assistant", namespace="team-a", resources=recipe.resources)
    result = run(DeployConfig(model_uri="models:/repotune-myproject@champion", settings=settings,
                              tracking_uri=uri))  # raises RolledBack if the new revision failed
    result = run(DeployConfig(model_uri=..., settings=settings, apply=False))  # `--dry-run`: render only
    print(to_yaml(list(result.objects)))

It writes no folder of its own: its output is the objects it applies (and, when asked, a manifest
file). Importing this package loads neither the Kubernetes client nor MLflow; the functions that need
them import them when called.
"""

from repotune.deploy.render import (
    DeploySettings,
    Runtime,
    S3Access,
    render_inference_service,
    render_manifests,
    render_service_account,
    render_serving_runtime,
    to_yaml,
)
from repotune.deploy.rollout import (
    ANNOTATION_ROLLED_BACK,
    RolledBack,
    Rollout,
    inference_service_failure,
    roll_out,
)
from repotune.deploy.stage import DeployConfig, DeployResult, RegisteredVersion, no_longer_champion, run
from repotune.deploy.uris import ModelSource, artifact_to_s3, from_storage_uri, resolve_model_uri

# The promotion decision lives (and is tested) with the evaluation; named here as the gate of deploys.
from repotune.evaluate.decide import Decision, Policy, should_promote

__all__ = [
    "ANNOTATION_ROLLED_BACK",
    "Decision",
    "DeployConfig",
    "DeployResult",
    "DeploySettings",
    "ModelSource",
    "Policy",
    "RegisteredVersion",
    "RolledBack",
    "Rollout",
    "Runtime",
    "S3Access",
    "artifact_to_s3",
    "from_storage_uri",
    "inference_service_failure",
    "no_longer_champion",
    "render_inference_service",
    "render_manifests",
    "render_service_account",
    "render_serving_runtime",
    "resolve_model_uri",
    "roll_out",
    "run",
    "should_promote",
    "to_yaml",
]
