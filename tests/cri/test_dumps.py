"""shim.cri._dumps: containerd 2.x's JSON documents (formats measured on containerd 2.1.9)."""

from __future__ import annotations

import json

from shim.api.k8s.cri.runtime.v1 import api_pb2
from shim.cri._dumps import config_dump, go_json, rfc3339nano, status_dump, status_record


def test_rfc3339nano_like_go() -> None:
    assert rfc3339nano(1796012335682845529) == "2026-11-30T04:18:55.682845529Z"
    assert rfc3339nano(1796012335680000000) == "2026-11-30T04:18:55.68Z"
    assert rfc3339nano(1796012335000000000) == "2026-11-30T04:18:55Z"
    assert rfc3339nano(0) == "0001-01-01T00:00:00Z"


def _status() -> api_pb2.ContainerStatus:
    return api_pb2.ContainerStatus(
        id="3b2c",
        metadata=api_pb2.ContainerMetadata(name="counter"),
        state=api_pb2.ContainerState.CONTAINER_RUNNING,
        created_at=1796012335683546175,
        started_at=1796012335731853162,
        image=api_pb2.ImageSpec(image="localhost/pyrunc-test:latest"),
        image_ref="sha256:e99b",
        labels={"io.kubernetes.pod.name": "counters"},
        log_path="/var/log/pods/x/counter/0.log",
        resources=api_pb2.ContainerResources(linux=api_pb2.LinuxContainerResources()),
        mounts=[api_pb2.Mount(container_path="/data", host_path="/srv", readonly=True)],
    )


def test_status_dump_is_go_json() -> None:
    doc = json.loads(status_dump(_status()))
    assert doc["state"] == 1  # enums as numbers
    assert doc["created_at"] == 1796012335683546175  # int64 as a number, not a string
    assert doc["metadata"] == {"name": "counter"}  # attempt 0 left out
    assert doc["image_ref"] == "sha256:e99b"
    assert doc["resources"] == {"linux": {}}  # a set, empty message stays
    assert doc["mounts"] == [{"container_path": "/data", "host_path": "/srv", "readonly": True}]
    assert "finished_at" not in doc and "exit_code" not in doc
    assert b" " not in status_dump(_status()).replace(b"pyrunc-test", b"")


def test_go_json_repeated_int64() -> None:
    msg = api_pb2.LinuxContainerUser(supplemental_groups=[0, 10])
    assert go_json(msg) == {"supplemental_groups": [0, 10]}


def test_config_dump_fields_in_containerd_order() -> None:
    pod = api_pb2.PodSandboxStatus(
        metadata=api_pb2.PodSandboxMetadata(name="counters", namespace="default", uid="59bd"))
    raw = config_dump(status=_status(), pod=pod, runtime="io.containerd.runc.v2",
                      checkpointed_ns=1796012336749603055)
    doc = json.loads(raw)
    assert list(doc) == ["id", "name", "rootfsImage", "rootfsImageRef", "rootfsImageName",
                         "runtime", "createdTime", "checkpointedTime", "restoredTime",
                         "restored"]
    assert doc["name"] == "counter_counters_default_59bd_0"
    assert doc["createdTime"] == "2026-11-30T04:18:55.683546175Z"
    assert doc["checkpointedTime"] == "2026-11-30T04:18:56.749603055Z"
    assert doc["restoredTime"] == "0001-01-01T00:00:00Z" and doc["restored"] is False


def test_status_record() -> None:
    doc = json.loads(status_record(_status(), 1977))
    assert doc == {"Version": "v1", "Pid": 1977, "CreatedAt": 1796012335683546175,
                   "StartedAt": 1796012335731853162, "FinishedAt": 0, "ExitCode": 0,
                   "Reason": "", "Message": "", "Resources": {"linux": {}}, "Restore": False}
