"""repotune.kube through the official client against the Kubernetes API stand-in (real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.kube_api import APPLY, KubeApi, fails_after, ready_after, running_kube_api
from tests.s3_server import closed_port_url

from repotune import kube
from repotune.errors import RepotuneError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


def pytorchjob(
    name: str = "train-x", workers: int = 1, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch"}]}}},
            "Worker": {"replicas": workers, "template": {"spec": {"containers": [{"name": "pytorch"}]}}},
        },
        **(extra or {}),
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": "team-a", "labels": {"app": "repotune"}},
        "spec": spec,
    }


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with running_kube_api() as server:
        yield server


def test_plural_and_paths_follow_kubernetes_conventions() -> None:
    assert kube.plural_of("InferenceService") == "inferenceservices"
    assert kube.plural_of("PyTorchJob") == "pytorchjobs"
    assert kube.plural_of("NetworkPolicy") == "networkpolicies"
    assert kube.plural_of("Ingress") == "ingresses"
    assert kube.plural_of("Gateway") == "gateways"
    assert kube.split_api_version("v1") == ("", "v1")
    assert kube.split_api_version("serving.kserve.io/v1beta1") == ("serving.kserve.io", "v1beta1")
    assert kube.resource_path("", "v1", "secrets", "ns", "s") == "/api/v1/namespaces/ns/secrets/s"
    assert (
        kube.resource_path(GROUP, VERSION, PLURAL, "ns") == "/apis/kubeflow.org/v1/namespaces/ns/pytorchjobs"
    )
    assert kube.resource_path("", "v1", "namespaces", None, "ns") == "/api/v1/namespaces/ns"


def test_connect_without_cluster_or_kubeconfig_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RepotuneError, match=r"no Kubernetes cluster to talk to.*--kube-host"):
        kube.connect()


@pytest.mark.integration
def test_apply_creates_then_updates_in_one_patch_each(api: KubeApi) -> None:
    client = kube.connect(host=api.url)
    created = kube.server_side_apply(pytorchjob(extra={"runPolicy": {"backoffLimit": 2}}), api=client)
    assert created["metadata"]["generation"] == 1
    assert created["spec"]["runPolicy"] == {"backoffLimit": 2}

    updated = kube.server_side_apply(pytorchjob(workers=3), api=client)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert updated["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    # A field this manager applied before and leaves out now is gone, as with a real server-side apply.
    assert "runPolicy" not in updated["spec"]

    # The same object again changes nothing: an idempotent retry.
    again = kube.server_side_apply(pytorchjob(workers=3), api=client)
    assert again["metadata"]["generation"] == 2

    writes = [r for r in api.requests if r.method != "GET"]
    assert [r.method for r in writes] == ["PATCH", "PATCH", "PATCH"]
    for request in writes:
        assert request.content_type == APPLY
        assert request.query == {"fieldManager": ["repotune"], "force": ["true"]}
        assert request.path == "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs/train-x"
    assert kube.get(GROUP, VERSION, PLURAL, "team-a", "train-x", api=client)["spec"] == updated["spec"]


@pytest.mark.integration
def test_core_objects_get_list_and_delete(api: KubeApi) -> None:
    client = kube.connect(host=api.url)
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "serving", "namespace": "team-a", "labels": {"app": "repotune"}},
        "secrets": [{"name": "s3"}],
    }
    kube.server_side_apply(account, field_manager="tests", api=client)
    kube.server_side_apply(pytorchjob("a"), api=client)
    kube.server_side_apply({**pytorchjob("b"), "metadata": {"name": "b", "namespace": "team-a"}}, api=client)

    assert api.requests[0].path == "/api/v1/namespaces/team-a/serviceaccounts/serving"
    assert api.requests[0].query["fieldManager"] == ["tests"]
    assert kube.get("", "v1", "serviceaccounts", "team-a", "serving", api=client)["secrets"] == [
        {"name": "s3"}
    ]
    labelled = kube.list_objects(GROUP, VERSION, PLURAL, "team-a", label_selector="app=repotune", api=client)
    assert [obj["metadata"]["name"] for obj in labelled] == ["a"]
    assert len(kube.list_objects(GROUP, VERSION, PLURAL, "team-a", api=client)) == 2

    assert kube.get(GROUP, VERSION, PLURAL, "team-a", "absent", api=client) is None
    assert kube.delete(GROUP, VERSION, PLURAL, "team-a", "a", api=client) is True
    assert kube.delete(GROUP, VERSION, PLURAL, "team-a", "a", api=client) is False
    assert kube.get(GROUP, VERSION, PLURAL, "team-a", "a", api=client) is None


@pytest.mark.integration
def test_a_missing_crd_is_an_error_not_an_absent_object(api: KubeApi) -> None:
    api.uninstall(PLURAL)
    client = kube.connect(host=api.url)
    with pytest.raises(
        RepotuneError, match=r"reading pytorchjobs.kubeflow.org team-a/x .*404.*CRD installed"
    ):
        kube.get(GROUP, VERSION, PLURAL, "team-a", "x", api=client)
    with pytest.raises(RepotuneError, match=r"applying pytorchjobs\.kubeflow\.org team-a/train-x"):
        kube.server_side_apply(pytorchjob(), api=client)


@pytest.mark.integration
def test_unreachable_api_server_names_the_host() -> None:
    url = closed_port_url()
    with pytest.raises(RepotuneError, match=f"cannot reach the Kubernetes API at {url}") as failed:
        kube.get(GROUP, VERSION, PLURAL, "team-a", "x", api=kube.connect(host=url))
    assert str(failed.value).endswith("Connection refused)")  # the reason, not urllib3's retry story
    with pytest.raises(RepotuneError, match="give the API server's URL"):
        kube.connect(host="kube.example.com:6443")  # no scheme: refused before any request


@pytest.mark.integration
def test_wait_returns_the_object_once_the_job_succeeds(api: KubeApi) -> None:
    api.controller(PLURAL, ready_after(3, condition="Succeeded"))
    client = kube.connect(host=api.url)
    kube.server_side_apply(pytorchjob(), api=client)
    seen: list[str] = []

    done = kube.wait_for_condition(
        GROUP,
        VERSION,
        PLURAL,
        "team-a",
        "train-x",
        "Succeeded",
        timeout_s=10,
        poll_s=0.01,
        progress=lambda obj: seen.append(kube.condition(obj, "Succeeded")["status"]),
        api=client,
    )
    assert kube.is_true(done, "Succeeded")
    assert seen == ["False", "False", "True"]


@pytest.mark.integration
def test_wait_raises_with_the_controllers_message_on_failure(api: KubeApi) -> None:
    api.controller(PLURAL, fails_after(2, message="worker 1 exited with code 137 (OOMKilled)"))
    client = kube.connect(host=api.url)
    kube.server_side_apply(pytorchjob(), api=client)
    with pytest.raises(kube.WaitFailed, match=r"reported Failed: JobFailed: worker 1 .*OOMKilled") as caught:
        kube.wait_for_condition(
            GROUP, VERSION, PLURAL, "team-a", "train-x", "Succeeded", timeout_s=10, poll_s=0.01, api=client
        )
    assert caught.value.timed_out is False
    assert caught.value.obj["metadata"]["name"] == "train-x"


@pytest.mark.integration
def test_wait_times_out_and_does_not_trust_a_stale_status(api: KubeApi) -> None:
    client = kube.connect(host=api.url)
    job = pytorchjob()
    # Succeeded for generation 1, but the object is at generation 2 and no controller has looked yet.
    job["metadata"]["generation"] = 2
    job["status"] = {"observedGeneration": 1, "conditions": [{"type": "Succeeded", "status": "True"}]}
    api.put(GROUP, PLURAL, job)
    generation = api.object(GROUP, PLURAL, "team-a", "train-x")["metadata"]["generation"]

    with pytest.raises(
        kube.WaitFailed, match=r"not Succeeded after 0.2 s: .*not observed generation"
    ) as caught:
        kube.wait_for_condition(
            GROUP,
            VERSION,
            PLURAL,
            "team-a",
            "train-x",
            "Succeeded",
            timeout_s=0.2,
            poll_s=0.05,
            min_generation=generation + 1,
            api=client,
        )
    assert caught.value.timed_out is True
    # Without a generation to wait for, the reported condition is taken as it is.
    done = kube.wait_for_condition(
        GROUP, VERSION, PLURAL, "team-a", "train-x", "Succeeded", timeout_s=1, poll_s=0.05, api=client
    )
    assert done["status"]["observedGeneration"] == 1


@pytest.mark.integration
def test_wait_reports_the_condition_message_on_timeout(api: KubeApi) -> None:
    client = kube.connect(host=api.url)
    api.controller(PLURAL, ready_after(1000, condition="Succeeded"))
    kube.server_side_apply(pytorchjob(), api=client)
    with pytest.raises(kube.WaitFailed, match="RevisionMissing: Configuration is waiting"):
        kube.wait_for_condition(
            GROUP, VERSION, PLURAL, "team-a", "train-x", "Succeeded", timeout_s=0.1, poll_s=0.02, api=client
        )
    with pytest.raises(kube.WaitFailed, match="disappeared"):
        kube.wait_for_condition(
            GROUP, VERSION, PLURAL, "team-a", "gone", timeout_s=1, poll_s=0.02, api=client
        )
