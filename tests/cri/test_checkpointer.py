"""shim.cri._checkpoint.Checkpointer against a fake containerd: what ends up at location, what
each failure leaves behind (nothing), and that a task left paused by a failed dump is resumed."""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from shim.api.containerd.runc.options import oci_pb2
from shim.api.k8s.cri.runtime.v1 import api_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.cri._checkpoint import Checkpointer, CheckpointSettings
from shim.cri._containerd import Containerd, ContainerRecord, TaskState
from shim.cri._errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unsupported,
    Upstream,
)
from shim.typeurl import unpack

CID = "c0ffee" * 10 + "abcd"


class FakeContainerd:
    def __init__(self, tmp: Path, *, major: int = 1) -> None:
        self.major = major
        self.state = api_pb2.ContainerState.CONTAINER_RUNNING
        self.task_status = "RUNNING"
        self.fail: Upstream | None = None
        self.annotations: dict[str, str] = {}
        self.options: Any = None
        self.resumed = 0
        self.log = tmp / "ctr.log"
        self.log.write_text("2026-11-30T04:18:55Z stdout F 1\n")

    def container_status(self, cid: str) -> Any:
        if cid != CID:
            raise Upstream(grpc.StatusCode.NOT_FOUND, f"container {cid!r} not found")
        return api_pb2.ContainerStatusResponse(status=api_pb2.ContainerStatus(
            id=CID, state=self.state, metadata=api_pb2.ContainerMetadata(name="counter"),
            image=api_pb2.ImageSpec(image="img"), image_ref="sha256:1", log_path=str(self.log),
            created_at=1))

    def sandbox_of(self, cid: str) -> str:
        return "pod1"

    def pod_status(self, pod_id: str) -> Any:
        return api_pb2.PodSandboxStatus(
            id=pod_id, annotations=self.annotations,
            metadata=api_pb2.PodSandboxMetadata(name="p", namespace="ns", uid="u"))

    def container(self, cid: str) -> ContainerRecord:
        return ContainerRecord(id=cid, runtime="io.containerd.pyrunc.v2", spec=b'{"ociVersion":1}',
                               snapshotter="overlayfs", snapshot_key=cid, image="img")

    def task(self, cid: str) -> TaskState:
        return TaskState(pid=42, status=self.task_status)

    def major_version(self) -> int:
        return self.major

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        yield "lease"

    def checkpoint(self, cid: str, options: Any, timeout: float | None) -> None:
        self.options = options
        opts = (unpack(options, checkpoint_pb2.CheckpointOptions)
                or unpack(options, oci_pb2.CheckpointOptions))
        assert opts is not None and not opts.exit
        images, work = Path(opts.image_path), Path(opts.work_path)
        images.mkdir()
        work.mkdir()
        (images / "inventory.img").write_bytes(b"i")
        (images / "descriptors.json").write_text("[]")
        (work / "dump.log").write_text("log")
        (work / "stats-dump").write_bytes(b"s")
        if self.fail is not None:
            self.task_status = "PAUSED"  # as a dump killed midway could leave it
            raise self.fail

    def resume(self, cid: str) -> None:
        self.resumed += 1
        self.task_status = "RUNNING"

    def rootfs_diff(self, record: ContainerRecord, out: Path, timeout: float | None) -> None:
        out.write_bytes(b"\x1f\x8b")


@pytest.fixture
def env(tmp_path: Path) -> tuple[Checkpointer, FakeContainerd, Path, Path]:
    fake = FakeContainerd(tmp_path)
    criu = tmp_path / "criu"
    criu.write_text("#!/bin/sh\necho 'Version: 4.2.1'\n")
    criu.chmod(0o755)
    work = tmp_path / "work"
    out = tmp_path / "out"
    out.mkdir()
    cp = Checkpointer(cast(Containerd, fake), CheckpointSettings(work_dir=work, criu=str(criu)))
    return cp, fake, work, out


def _req(location: Path | str, cid: str = CID) -> Any:
    return api_pb2.CheckpointContainerRequest(container_id=cid, location=str(location))


def test_archive(env: tuple[Checkpointer, FakeContainerd, Path, Path]) -> None:
    cp, fake, work, out = env
    location = out / "checkpoint-p_ns-counter-2026-11-30T04:18:56Z.tar"
    cp.checkpoint(_req(location), 120)
    assert stat.S_IMODE(location.stat().st_mode) == 0o600
    with tarfile.open(location) as tar:
        names = tar.getnames()
    assert names == ["checkpoint", "checkpoint/descriptors.json", "checkpoint/inventory.img",
                     "config.dump", "container.log", "dump.log", "rootfs-diff.tar",
                     "spec.dump", "stats-dump", "status", "status.dump"]
    assert os.listdir(work) == [] and os.listdir(out) == [location.name]
    assert fake.options.type_url == "pyrunc.v1.CheckpointOptions"


def test_containerd_2_gets_runc_options(env: tuple[Checkpointer, FakeContainerd, Path, Path]
                                        ) -> None:
    cp, fake, _, out = env
    fake.major = 2
    cp.checkpoint(_req(out / "c.tar"), 120)
    assert fake.options.type_url == "containerd.runc.v1.CheckpointOptions"


def _refused(cp: Checkpointer, req: Any, work: Path, out: Path, kind: type[Exception],
             text: str) -> None:
    with pytest.raises(kind, match=text):
        cp.checkpoint(req, 120)
    assert os.listdir(out) == []
    assert not work.exists() or os.listdir(work) == []


def test_errors(env: tuple[Checkpointer, FakeContainerd, Path, Path], tmp_path: Path) -> None:
    cp, fake, work, out = env
    _refused(cp, _req("rel.tar"), work, out, InvalidArgument, "absolute")
    _refused(cp, _req(out / "no" / "c.tar"), work, out, InvalidArgument, "does not exist")
    with pytest.raises(Upstream) as info:
        cp.checkpoint(_req(out / "c.tar", cid="nope"), 120)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    fake.state = api_pb2.ContainerState.CONTAINER_EXITED
    _refused(cp, _req(out / "c.tar"), work, out, FailedPrecondition, "CONTAINER_EXITED")
    fake.state = api_pb2.ContainerState.CONTAINER_RUNNING
    fake.annotations = {"io.pyrunc.checkpoint.bogus": "true"}
    _refused(cp, _req(out / "c.tar"), work, out, InvalidArgument, "bogus")
    fake.annotations = {}
    no_criu = Checkpointer(cast(Containerd, fake),
                           CheckpointSettings(work_dir=work, criu=str(tmp_path / "none")))
    _refused(no_criu, _req(out / "c.tar"), work, out, Unsupported, "CRIU binary not found")


def test_failed_dump_resumes_and_leaves_nothing(
        env: tuple[Checkpointer, FakeContainerd, Path, Path]) -> None:
    cp, fake, work, out = env
    fake.fail = Upstream(grpc.StatusCode.UNKNOWN, "criu failed")
    _refused(cp, _req(out / "c.tar"), work, out, Upstream, "criu failed")
    assert fake.resumed == 1 and fake.task_status == "RUNNING"


def test_deadline(env: tuple[Checkpointer, FakeContainerd, Path, Path]) -> None:
    cp, fake, work, out = env
    fake.fail = Upstream(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    _refused(cp, _req(out / "c.tar"), work, out, DeadlineExceeded, "deadline")
    assert fake.resumed == 1


def test_container_id_empty_is_not_found(env: tuple[Checkpointer, FakeContainerd, Path, Path]
                                         ) -> None:
    cp, _, work, out = env
    _refused(cp, _req(out / "c.tar", cid=""), work, out, NotFound, "empty")
