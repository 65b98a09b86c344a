"""Serve a model on KServe: render the InferenceService, apply it idempotently, roll back on failure.

    model = resolve_model_uri("models:/repotune-myproject@champion", tracking_uri=uri)
    settings = DeploySettings(name="myproject-assistant", namespace="team-a", resources=recipe.resources)
    print(to_yaml(render_manifests(model, settings)))  # what `repotune deploy --dry-run` prints
    result = deploy(model, settings, timeout_s=900, tracking_uri=uri)  # RolledBack if it failed

Importing this package loads neither the Kubernetes client nor MLflow; the functions that need them
import them when called.
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
from repotune.deploy.rollout import DeployResult, RolledBack, deploy, inference_service_failure
from repotune.deploy.uris import ModelSource, artifact_to_s3, from_storage_uri, resolve_model_uri

# The promotion decision lives (and is tested) with the evaluation; named here as the gate of deploys.
from repotune.evaluate.decide import Decision, Policy, should_promote

__all__ = [
    "Decision",
    "DeployResult",
    "DeploySettings",
    "ModelSource",
    "Policy",
    "RolledBack",
    "Runtime",
    "S3Access",
    "artifact_to_s3",
    "deploy",
    "from_storage_uri",
    "inference_service_failure",
    "render_inference_service",
    "render_manifests",
    "render_service_account",
    "render_serving_runtime",
    "resolve_model_uri",
    "should_promote",
    "to_yaml",
]
