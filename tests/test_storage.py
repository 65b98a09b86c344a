"""repotune.storage and checkpoint sync against a real S3 API (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import urllib3
from minio.error import S3Error
from tests.s3_server import closed_port_url, reset, running_s3_server, s3_environment

from repotune import storage
from repotune.errors import RepotuneError

BUCKET = "repotune-test"
FAST = storage.RetryPolicy(attempts=3, first_wait_s=0.01, max_wait_s=0.05, total_wait_s=1.0)


@pytest.fixture(scope="module")
def s3_endpoint():
    with running_s3_server() as endpoint_url:
        yield endpoint_url


@pytest.fixture
def client(s3_endpoint):
    reset(s3_endpoint)
    with s3_environment(s3_endpoint):
        client = storage.client_from_env()
        client.make_bucket(BUCKET)
        yield client


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def folders(uri: str, client) -> list[str]:
    """The folders one level below the prefix ``uri`` that hold any object (SeaweedFS also lists
    folders whose objects were all deleted), sorted."""
    return sorted({key.split("/")[0] for key in storage.prefix_etags(uri, client=client) if "/" in key})


def read_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


NESTED = {
    "config.json": b'{"a": 1}',
    "weights/model.safetensors": os.urandom(3000),
    "weights/deeper/notes.txt": b"",
    "tokenizer.json": "vocabulário".encode(),
}


def test_uri_helpers():
    assert storage.parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert storage.parse_s3_uri("s3://bucket") == ("bucket", "")
    assert storage.parse_s3_uri("minio://mlpipeline/v2/artifacts/x") == ("mlpipeline", "v2/artifacts/x")
    assert (
        storage.minio_to_s3("minio://mlpipeline/v2/artifacts/run/model")
        == "s3://mlpipeline/v2/artifacts/run/model"
    )
    assert storage.minio_to_s3("s3://b/k") == "s3://b/k"
    assert storage.is_s3_uri("s3://b/k") and storage.is_s3_uri("minio://b/k")
    assert not storage.is_s3_uri("/tmp/s3://x") and not storage.is_s3_uri(Path("s3:/b"))
    with pytest.raises(RepotuneError, match="bucket name"):
        storage.parse_s3_uri("s3://Bad_Bucket/x")
    with pytest.raises(RepotuneError, match="not a minio"):
        storage.minio_to_s3("/local/path")


@pytest.mark.parametrize("missing", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_missing_credentials_name_the_variable(missing):
    with s3_environment("http://127.0.0.1:9"):
        del os.environ[missing]
        with pytest.raises(RepotuneError, match=missing):
            storage.client_from_env()


def test_local_copy_and_fetch(tmp_path):
    write_files(tmp_path / "src", NESTED)
    storage.copy_to(tmp_path / "src", tmp_path / "dst")
    assert read_files(tmp_path / "dst") == NESTED
    storage.fetch(str(tmp_path / "src" / "config.json"), tmp_path / "one" / "c.json")
    assert (tmp_path / "one" / "c.json").read_bytes() == NESTED["config.json"]


@pytest.mark.integration
def test_unreachable_endpoint_fails_fast():
    url = closed_port_url()
    started = time.monotonic()
    with s3_environment(url), pytest.raises(RepotuneError, match=rf"{url}.*S3_ENDPOINT_URL"):
        storage.client_from_env()
    with s3_environment(url):
        # a client made while the server was up, used after it went away: bounded retries, then a named error
        client = storage.client_from_env(check_reachable=False)
        with pytest.raises(RepotuneError, match=rf"cannot reach the object store at {url}"):
            storage.exists_complete(f"s3://{BUCKET}/x", client=client, retry=FAST)
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_folder_round_trip(client, tmp_path):
    write_files(tmp_path / "model", NESTED)
    uri = f"s3://{BUCKET}/runs/1/model"
    marker = storage.upload_dir(tmp_path / "model", uri, client=client)

    assert [f["path"] for f in marker["files"]] == sorted(NESTED)
    assert marker["total_bytes"] == sum(len(data) for data in NESTED.values())
    assert storage.exists_complete(uri, client=client)
    assert folders(f"s3://{BUCKET}/runs/1", client) == ["model"]

    out = storage.download_dir(uri + "/", tmp_path / "out" / "model", client=client)
    assert read_files(out) == NESTED
    assert os.listdir(tmp_path / "out") == ["model"]  # no temporary sibling left behind

    # fetch/copy_to take either kind of location
    storage.fetch(uri, tmp_path / "fetched")
    assert read_files(tmp_path / "fetched") == NESTED
    storage.copy_to(tmp_path / "model" / "config.json", f"s3://{BUCKET}/single/")
    storage.fetch(f"s3://{BUCKET}/single/config.json", tmp_path / "single.json")
    assert (tmp_path / "single.json").read_bytes() == NESTED["config.json"]


@pytest.mark.integration
def test_reupload_ignores_stale_objects(client, tmp_path):
    uri = f"s3://{BUCKET}/ckpt"
    write_files(tmp_path / "v1", {"a.txt": b"one", "b.txt": b"old"})
    write_files(tmp_path / "v2", {"a.txt": b"two"})
    storage.upload_dir(tmp_path / "v1", uri, client=client)
    storage.upload_dir(tmp_path / "v2", uri, client=client)
    # b.txt from v1 is still in the bucket, but not in the marker, so it is not part of the folder
    assert read_files(storage.download_dir(uri, tmp_path / "out", client=client)) == {"a.txt": b"two"}


@pytest.mark.integration
def test_large_file_goes_multipart(client, tmp_path):
    data = os.urandom(12 * 2**20)
    (tmp_path / "big.bin").write_bytes(data)
    uri = storage.upload_file(tmp_path / "big.bin", f"s3://{BUCKET}/big/", client=client)
    assert uri == f"s3://{BUCKET}/big/big.bin"
    # a multipart object's ETag ends in "-<number of parts>": 5 + 5 + 2 MiB
    assert client.stat_object(BUCKET, "big/big.bin").etag.endswith("-3")
    storage.fetch(uri, tmp_path / "back.bin", client=client)
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.integration
def test_prefix_without_marker_is_absent(client, tmp_path):
    write_files(tmp_path, {"part.bin": b"half"})
    storage.upload_file(tmp_path / "part.bin", f"s3://{BUCKET}/unfinished/part.bin", client=client)
    uri = f"s3://{BUCKET}/unfinished"
    assert not storage.exists_complete(uri, client=client)
    assert not storage.exists_complete(f"s3://{BUCKET}/nothing-here", client=client)
    with pytest.raises(RepotuneError, match="no _COMPLETE marker"):
        storage.download_dir(uri, tmp_path / "out", client=client)
    with pytest.raises(RepotuneError, match="no _COMPLETE marker"):
        storage.fetch(uri, tmp_path / "out", client=client)
    assert not (tmp_path / "out").exists()
    out = storage.download_dir(uri, tmp_path / "out", require_complete=False, client=client)
    assert read_files(out) == {"part.bin": b"half"}


@pytest.mark.integration
def test_missing_bucket_is_a_clear_error(client, tmp_path):
    write_files(tmp_path / "d", {"x": b"1"})
    with pytest.raises(storage.PublishError, match="bucket 'no-such-bucket' does not exist") as raised:
        storage.upload_dir(tmp_path / "d", "s3://no-such-bucket/x", client=client, retry=FAST)
    assert raised.value.destination == "s3://no-such-bucket/x/"
    with pytest.raises(storage.PublishError, match="bucket 'no-such-bucket' does not exist"):
        storage.upload_file(tmp_path / "d" / "x", "s3://no-such-bucket/x/", client=client, retry=FAST)
    # a local mistake is not a publishing failure
    with pytest.raises(RepotuneError, match="is not a folder") as raised:
        storage.upload_dir(tmp_path / "nothing", "s3://no-such-bucket/x", client=client)
    assert not isinstance(raised.value, storage.PublishError)


@pytest.mark.integration
def test_publish_to_a_store_that_refuses_raises_a_publish_error(client, tmp_path):
    """A stage's output that does not reach ``artifacts_root`` fails the stage, naming what and where."""
    write_files(tmp_path / "model", NESTED)
    with pytest.raises(storage.PublishError) as raised:
        storage.publish(tmp_path / "model", "s3://no-such-bucket/runs", "/src/shop", "abc123", "model")
    message = str(raised.value)
    assert message.startswith("the model output was not published to s3://no-such-bucket/runs/")
    assert f"it is complete at {tmp_path / 'model'}" in message and "does not exist" in message
    assert raised.value.destination.startswith("s3://no-such-bucket/runs/") and message.count("\n") == 0
    # the same call with a bucket that is there publishes
    dest = storage.publish(
        tmp_path / "model", f"s3://{BUCKET}/runs", "/src/shop", "abc123", "model", log=print
    )
    assert storage.exists_complete(dest, client=client)


@pytest.mark.integration
def test_publish_to_an_unreachable_store_raises_a_publish_error(tmp_path):
    write_files(tmp_path / "data", {"a.jsonl": b"{}"})
    with s3_environment(closed_port_url()), pytest.raises(storage.PublishError, match="cannot reach"):
        storage.publish(tmp_path / "data", f"s3://{BUCKET}/runs", "/src/shop", "abc123", "clean")


class FailFirst:
    """The real client, except that the first call of one method raises ``error`` before reaching it."""

    def __init__(self, client, method: str, error: Exception) -> None:
        self._client = client
        self._method = method
        self._error = error
        self.calls = 0

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if name != self._method:
            return attribute

        def wrapper(*args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                raise self._error
            return attribute(*args, **kwargs)

        return wrapper


def s3_error(code: str) -> S3Error:
    return S3Error(None, code, "injected", "/", "req", "host", bucket_name=BUCKET)


@pytest.mark.integration
@pytest.mark.parametrize(
    "error",
    [s3_error("SlowDown"), urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())],
    ids=["slowdown", "connection-reset"],
)
def test_transient_failure_is_retried(client, tmp_path, error, caplog):
    write_files(tmp_path / "d", {"a.txt": b"a", "b.txt": b"b"})
    flaky = FailFirst(client, "fput_object", error)
    storage.upload_dir(tmp_path / "d", f"s3://{BUCKET}/retried", client=flaky, retry=FAST)
    assert flaky.calls == 3  # a.txt twice, b.txt once
    assert "retrying" in caplog.text
    assert read_files(storage.download_dir(f"s3://{BUCKET}/retried", tmp_path / "out", client=client)) == {
        "a.txt": b"a",
        "b.txt": b"b",
    }


@pytest.mark.integration
def test_permanent_failure_is_not_retried(client, tmp_path):
    write_files(tmp_path / "d", {"a.txt": b"a"})
    flaky = FailFirst(client, "fput_object", s3_error("AccessDenied"))
    with pytest.raises(RepotuneError, match=r"AccessDenied.*AWS_ACCESS_KEY_ID"):
        storage.upload_dir(tmp_path / "d", f"s3://{BUCKET}/denied", client=flaky, retry=FAST)
    assert flaky.calls == 1
    assert not storage.exists_complete(f"s3://{BUCKET}/denied", client=client)


def save_checkpoint(output_dir: Path, step: int, *, complete: bool = True, run: dict | None = None) -> Path:
    """A small checkpoint in the Trainer's file formats (safetensors, torch zips, JSON state), with the
    ``run.json`` of ``run`` when given."""
    import json

    import torch
    from safetensors.torch import save_file

    from repotune.train import checkpoints

    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file(
        {"lora_A": torch.randn(4, 8), "lora_B": torch.randn(8, 4)}, folder / "adapter_model.safetensors"
    )
    torch.save({"state": {0: {"exp_avg": torch.randn(4, 8)}}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if run is not None:
        checkpoints.write_run(folder, run)
    if complete:
        checkpoints.mark_complete(folder, step)
    return folder


@pytest.mark.integration
def test_checkpoint_upload_and_restore(client, tmp_path):
    from repotune.train.checkpoint_sync import CheckpointUpload, restore_latest_checkpoint

    uri = f"s3://{BUCKET}/runs/7/checkpoints"
    lines: list[str] = []
    callback = CheckpointUpload(uri, lines.append, client=client)
    output_dir = tmp_path / "pod-a"
    for step in (10, 20):
        save_checkpoint(output_dir, step)
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        callback.on_save(SimpleNamespace(output_dir=str(output_dir)), state, SimpleNamespace())
    assert storage.exists_complete(f"{uri}/checkpoint-20", client=client)
    assert "uploaded checkpoint-20" in lines[-1]

    # other ranks upload nothing
    save_checkpoint(output_dir, 25)
    other_rank = SimpleNamespace(global_step=25, is_world_process_zero=False)
    callback.on_save(SimpleNamespace(output_dir=str(output_dir)), other_rank, SimpleNamespace())
    assert "checkpoint-25" not in folders(uri, client)

    # an upload cut short: files of checkpoint-30 but no marker
    storage.upload_file(
        save_checkpoint(output_dir, 30) / "trainer_state.json", f"{uri}/checkpoint-30/", client=client
    )
    # a checkpoint whose upload finished but whose files do not load (uploaded by a version without
    # the completeness check, or damaged in the store): complete for the store, not for a resume
    damaged = save_checkpoint(output_dir, 40)
    (damaged / "optimizer.pt").write_bytes(b"\0" * (damaged / "optimizer.pt").stat().st_size)
    storage.upload_dir(damaged, f"{uri}/checkpoint-40", client=client)

    # a new pod with an empty disk resumes from the newest checkpoint that is complete on arrival
    fresh = tmp_path / "pod-b" / "checkpoints"
    restored = restore_latest_checkpoint(uri, fresh, log=lines.append, client=client)
    assert restored == fresh / "checkpoint-20"
    assert read_files(restored) == read_files(output_dir / "checkpoint-20")
    assert [p.name for p in fresh.iterdir()] == ["checkpoint-20"]
    assert lines[-2:] == [
        f"skipping {uri}/checkpoint-40/: optimizer.pt does not load (File is not a zip file)",
        f"skipping {uri}/checkpoint-30/: its upload did not finish",
    ]
    # with a complete local checkpoint there is nothing to restore; nor from an empty prefix
    assert restore_latest_checkpoint(uri, fresh, client=client) is None
    assert restore_latest_checkpoint(f"s3://{BUCKET}/empty", tmp_path / "pod-c", client=client) is None
    # an incomplete local checkpoint (a kill mid-save) does not count: the store's newest complete one comes
    pod_d = tmp_path / "pod-d" / "checkpoints"
    save_checkpoint(pod_d, 50, complete=False)
    assert restore_latest_checkpoint(uri, pod_d, log=lines.append, client=client) == pod_d / "checkpoint-20"


@pytest.mark.integration
def test_only_complete_checkpoints_are_uploaded_and_the_report_says_what_got_there(client, tmp_path):
    from repotune.train.checkpoint_sync import CheckpointUpload

    uri = f"s3://{BUCKET}/runs/8/checkpoints"
    lines: list[str] = []
    callback = CheckpointUpload(uri, lines.append, client=client)
    assert callback.report() == {
        "checkpoint_uri": uri,
        "uploaded": [],
        "failed": [],
        "deleted": [],
        "ok": True,
    }
    args = SimpleNamespace(output_dir=str(tmp_path))
    save_checkpoint(tmp_path, 10)
    callback.on_save(args, SimpleNamespace(global_step=10, is_world_process_zero=True), SimpleNamespace())
    save_checkpoint(tmp_path, 20, complete=False)
    callback.on_save(args, SimpleNamespace(global_step=20, is_world_process_zero=True), SimpleNamespace())
    assert lines[-1].startswith("warning: checkpoint checkpoint-20 was not uploaded")
    assert "not a complete checkpoint: it has no checkpoint_complete.json" in lines[-1]
    assert folders(uri, client) == ["checkpoint-10"]
    report = callback.report()
    assert report["uploaded"] == ["checkpoint-10"] and report["ok"] is False
    assert [entry["checkpoint"] for entry in report["failed"]] == ["checkpoint-20"]


@pytest.mark.integration
def test_remove_dir_deletes_one_folder_marker_first(client, tmp_path, monkeypatch):
    write_files(tmp_path / "a", NESTED)
    storage.upload_dir(tmp_path / "a", f"s3://{BUCKET}/runs/a", client=client)
    storage.upload_dir(tmp_path / "a", f"s3://{BUCKET}/runs/a-b", client=client)  # shares the name's start
    assert storage.remove_dir(f"s3://{BUCKET}/runs/a", client=client) == len(NESTED) + 1
    assert storage.prefix_etags(f"s3://{BUCKET}/runs", client=client).keys() == {
        f"a-b/{k}" for k in NESTED
    } | {"a-b/_COMPLETE"}
    assert storage.exists_complete(f"s3://{BUCKET}/runs/a-b", client=client)
    assert storage.remove_dir(f"s3://{BUCKET}/runs/a", client=client) == 0
    with pytest.raises(RepotuneError, match="refusing to delete the whole bucket"):
        storage.remove_dir(f"s3://{BUCKET}", client=client)

    # the server refuses the batch delete after the marker is gone: the folder reads as unfinished
    monkeypatch.setattr(client, "remove_objects", refuse_deletes)
    with pytest.raises(RepotuneError, match=r"runs/a-b/: 4 objects not deleted, the first .* \(AccessDenied"):
        storage.remove_dir(f"s3://{BUCKET}/runs/a-b", client=client)
    assert not storage.exists_complete(f"s3://{BUCKET}/runs/a-b", client=client)
    assert storage.prefix_etags(f"s3://{BUCKET}/runs/a-b", client=client).keys() == NESTED.keys()


@pytest.mark.integration
def test_checkpoint_upload_rotates_the_store_as_the_disk_is(client, tmp_path, monkeypatch):
    from repotune.train.checkpoint_sync import CheckpointUpload

    uri = f"s3://{BUCKET}/runs/9/checkpoints"
    ours, theirs = {"seed": 0, "max_steps": 40}, {"seed": 1, "max_steps": 40}
    lines: list[str] = []
    callback = CheckpointUpload(uri, lines.append, keep=2, run=ours, client=client)
    output_dir = tmp_path / "pod"

    def save(step: int) -> None:
        save_checkpoint(output_dir, step, run=ours)
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        callback.on_save(SimpleNamespace(output_dir=str(output_dir)), state, SimpleNamespace())

    # another run's checkpoint under the same prefix, and an upload of ours that a lost pod cut short
    storage.upload_dir(
        save_checkpoint(tmp_path / "other", 5, run=theirs), f"{uri}/checkpoint-5", client=client
    )
    storage.upload_file(
        save_checkpoint(tmp_path / "lost", 15) / "optimizer.pt", f"{uri}/checkpoint-15/", client=client
    )
    save(10)
    save(20)
    # two complete checkpoints of ours are within keep=2; the unfinished upload is older than 20: gone
    assert folders(uri, client) == ["checkpoint-10", "checkpoint-20", "checkpoint-5"]
    assert lines[-2:] == [
        f"kept {uri}/checkpoint-5/ in the store: it records another run (seed)",
        f"deleted checkpoint-15 from {uri} (keeping the newest 2)",
    ]
    save(30)
    assert folders(uri, client) == ["checkpoint-20", "checkpoint-30", "checkpoint-5"]
    assert lines[-1] == f"deleted checkpoint-10 from {uri} (keeping the newest 2)"
    assert sum("another run" in line for line in lines) == 1  # said once
    # the newest checkpoint is what a new pod restores
    from repotune.train.checkpoint_sync import restore_latest_checkpoint

    assert (
        restore_latest_checkpoint(uri, tmp_path / "new-pod", client=client)
        == tmp_path / "new-pod" / "checkpoint-30"
    )

    # a store that refuses deletes costs a warning and one checkpoint too many, not the run
    real_remove_objects = client.remove_objects
    monkeypatch.setattr(client, "remove_objects", refuse_deletes)
    save(40)
    assert lines[-1].startswith(f"warning: older checkpoints under {uri} were not deleted: ")
    assert "AccessDenied" in lines[-1]
    # checkpoint-20 lost its marker before the refusal: it reads as unfinished, and the next rotation
    # that the store allows removes it
    assert folders(uri, client) == ["checkpoint-20", "checkpoint-30", "checkpoint-40", "checkpoint-5"]
    monkeypatch.setattr(client, "remove_objects", real_remove_objects)
    save(50)
    assert folders(uri, client) == ["checkpoint-40", "checkpoint-5", "checkpoint-50"]
    report = callback.report()
    assert report["ok"] is True and report["failed"] == []
    assert report["uploaded"] == [f"checkpoint-{step}" for step in (10, 20, 30, 40, 50)]
    assert report["deleted"] == ["checkpoint-15", "checkpoint-10", "checkpoint-20", "checkpoint-30"]


@pytest.mark.integration
def test_published_checkpoints_go_once_the_model_is_published(client, tmp_path, monkeypatch):
    from repotune.train import TrainLayout, TrainResult

    uri = f"s3://{BUCKET}/runs/app/abc/1f2e/checkpoints"
    for step in (20, 30):
        storage.upload_dir(save_checkpoint(tmp_path, step), f"{uri}/checkpoint-{step}", client=client)
    storage.upload_file(
        save_checkpoint(tmp_path, 40) / "optimizer.pt", f"{uri}/checkpoint-40/", client=client
    )
    storage.upload_dir(
        save_checkpoint(tmp_path / "model", 30), f"s3://{BUCKET}/runs/app/abc/1f2e/model", client=client
    )
    result = TrainResult(
        TrainLayout(tmp_path / "model"), "tiny", "lora", "1f2e", 30, 1.0, None, None, None, uri
    )
    lines: list[str] = []
    monkeypatch.setattr(client, "remove_objects", refuse_deletes)
    monkeypatch.setattr(storage, "client_from_env", lambda **_: client)  # the client that refuses
    result.drop_published_checkpoints(log=lines.append)
    assert lines[0].startswith(f"warning: the run's checkpoints were not deleted from {uri}: ")
    monkeypatch.undo()  # a store that deletes again
    result.drop_published_checkpoints(log=lines.append)
    assert (
        lines[1] == f"deleted checkpoint-20, checkpoint-30, checkpoint-40 from {uri}: the model is published"
    )
    assert storage.prefix_etags(uri, client=client) == {}
    assert storage.exists_complete(f"s3://{BUCKET}/runs/app/abc/1f2e/model", client=client)  # beside it: kept


def refuse_deletes(bucket, objects):
    """``Minio.remove_objects`` of a store whose policy forbids batch deletes: an error for each object."""
    from minio.deleteobjects import DeleteError

    return [DeleteError("AccessDenied", "Access Denied.", obj.name, None) for obj in objects]


@pytest.mark.integration
def test_checkpoint_upload_failure_does_not_stop_training(client, tmp_path):
    from repotune.train.checkpoint_sync import CheckpointUpload

    lines: list[str] = []
    callback = CheckpointUpload("s3://no-such-bucket/ckpts", lines.append, client=client)
    save_checkpoint(tmp_path, 5)
    state = SimpleNamespace(global_step=5, is_world_process_zero=True)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, SimpleNamespace())
    assert lines[0].startswith("warning: checkpoint checkpoint-5 was not uploaded")
    assert "no-such-bucket" in lines[0]
    assert (tmp_path / "checkpoint-5").is_dir()
