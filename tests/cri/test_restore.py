"""The CreateContainer request a restore sends to containerd's CRI (shim.cri._restore)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shim.api.k8s.cri.runtime.v1 import api_pb2
from shim.bundle import RESTORE_ANNOTATION
from shim.cri._errors import InvalidArgument
from shim.cri._restore import read_meta, restore_request

SPEC = {
    "process": {"args": ["/bin/sh", "-c", "exec counter"], "cwd": "/work",
                "env": ["PATH=/usr/bin", "POD_NAME=pod-a", "EMPTY="]},
    "annotations": {"io.kubernetes.cri.sandbox-id": "old-sandbox",
                    "io.kubernetes.container.hash": "old-hash",
                    "io.kubernetes.container.restartCount": "3",
                    "app.example/keep": "yes", "org.criu.config": "/old/criu.conf"},
}


def unpacked(tmp_path: Path, mounts: list[str] = ()) -> Path:  # type: ignore[assignment]
    (tmp_path / "config.dump").write_text(json.dumps({
        "rootfsImageName": "localhost/base:1", "rootfsImageRef": "sha256:" + "b" * 64,
        "checkpointedTime": "2026-11-30T04:00:00.5Z"}))
    (tmp_path / "spec.dump").write_text(json.dumps(SPEC))
    (tmp_path / "status.dump").write_text(json.dumps(
        {"mounts": [{"container_path": m, "host_path": "/old" + m} for m in mounts]}))
    return tmp_path


def request(mounts: list[str] = ()) -> api_pb2.CreateContainerRequest:  # type: ignore[assignment]
    return api_pb2.CreateContainerRequest(
        pod_sandbox_id="new-sandbox",
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="counter", attempt=1),
            image=api_pb2.ImageSpec(image="/var/lib/kubelet/checkpoints/ck.tar"),
            annotations={"io.kubernetes.container.hash": "new-hash",
                         "io.kubernetes.container.restartCount": "1"},
            labels={"io.kubernetes.pod.uid": "new-uid"},
            mounts=[api_pb2.Mount(container_path=m, host_path="/new" + m) for m in mounts],
            log_path="counter/1.log"),
    )


def test_request_has_the_checkpoint_process_and_the_new_identity(tmp_path: Path) -> None:
    meta = read_meta(unpacked(tmp_path))
    new = restore_request(request(), meta, base_image="localhost/base:1",
                          images_dir="/w/restore/ck-1/checkpoint",
                          checkpoint_image="/var/lib/kubelet/checkpoints/ck.tar")
    c = new.config
    assert new.pod_sandbox_id == "new-sandbox"
    assert c.image.image == "localhost/base:1"
    assert list(c.command) == ["/bin/sh", "-c", "exec counter"] and list(c.args) == []
    assert c.working_dir == "/work"
    assert [(e.key, e.value) for e in c.envs] == [
        ("PATH", b"/usr/bin"), ("POD_NAME", b"pod-a"), ("EMPTY", b"")]
    assert dict(c.annotations) == {
        "io.kubernetes.container.hash": "new-hash",
        "io.kubernetes.container.restartCount": "1",
        "app.example/keep": "yes",
        "restored": "true",
        "checkpointedAt": "2026-11-30T04:00:00.5Z",
        "checkpointImage": "/var/lib/kubelet/checkpoints/ck.tar",
        RESTORE_ANNOTATION: "/w/restore/ck-1/checkpoint",
    }
    assert c.metadata.attempt == 1 and c.log_path == "counter/1.log"
    assert dict(c.labels) == {"io.kubernetes.pod.uid": "new-uid"}


def test_a_mount_of_the_checkpoint_must_be_in_the_request(tmp_path: Path) -> None:
    meta = read_meta(unpacked(tmp_path, ["/data", "/etc/hosts"]))
    with pytest.raises(InvalidArgument, match="/data"):
        restore_request(request(), meta, base_image="b", images_dir="/i", checkpoint_image="c")
    new = restore_request(request(["/data"]), meta, base_image="b", images_dir="/i",
                          checkpoint_image="c")
    assert [m.host_path for m in new.config.mounts] == ["/new/data"]


@pytest.mark.parametrize(("config", "spec", "match"), [
    ({}, SPEC, "names no base image"),
    ({"rootfsImageName": "x"}, {"annotations": {}}, "no process"),
    ({"rootfsImageName": "x"}, [1], "not a JSON object"),
])
def test_bad_metadata_refused(tmp_path: Path, config: object, spec: object,
                              match: str) -> None:
    (tmp_path / "config.dump").write_text(json.dumps(config))
    (tmp_path / "spec.dump").write_text(json.dumps(spec))
    with pytest.raises(InvalidArgument, match=match):
        read_meta(tmp_path)


def test_a_call_without_deadline_has_none_downstream() -> None:
    """grpcio reports no deadline as a huge time remaining; passed on, it would expire at
    once (the forwarded StartContainer failed with DeadlineExceeded)."""
    from shim.cri._checkpoint import Clock
    from shim.cri._proxy import NO_DEADLINE, _timeout

    class Context:
        def __init__(self, remaining: float | None) -> None:
            self.remaining = remaining

        def time_remaining(self) -> float | None:
            return self.remaining

    for huge in (None, NO_DEADLINE * 2, 1e300):
        assert _timeout(Context(huge)) is None  # type: ignore[arg-type]
        assert Clock(huge).left() is None
    assert _timeout(Context(-1.0)) == 0.0  # type: ignore[arg-type]
    left = Clock(30.0).left()
    assert left is not None and 29 < left <= 30
