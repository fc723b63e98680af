"""The containerd calls a migration makes (grpc, synchronous), on either host.

Strategy: one small client per containerd socket and namespace, made by :func:`connect`
(closes its channel on exit). Every ``grpc.RpcError`` becomes a
:class:`~shim.migrate._errors.ContainerdError` here. ``shim.ctl`` has its own client for the
commands; this one is separate so the migration never imports the command line (imports
flow one way: ``shim.ctl`` -> ``shim.migrate``).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2

from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shim.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from shim.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc

from ._errors import ContainerdError

__all__ = ["Containerd", "Task", "connect", "ctr"]

T = TypeVar("T")
_NAMESPACE_HEADER = "containerd-namespace"
_STATUS = {0: "UNKNOWN", 1: "CREATED", 2: "RUNNING", 3: "STOPPED", 4: "PAUSED", 5: "PAUSING"}


@dataclass(frozen=True, slots=True)
class Task:
    """A task as Tasks/Get reports it."""

    pid: int
    status: str
    exit_status: int


class Containerd:
    """containerd's Containers, Snapshots and Tasks for one namespace (from :func:`connect`)."""

    def __init__(self, channel: Any, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self.containers = containers_pb2_grpc.ContainersStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.tasks = tasks_pb2_grpc.TasksStub(channel)
        self._md = ((_NAMESPACE_HEADER, namespace),)

    def call(self, method: Callable[..., T], request: object, timeout: float = 300) -> T:
        """One unary call with the namespace header; errors as ContainerdError."""
        try:
            return method(request, metadata=self._md, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            raise ContainerdError(code.name if code is not None else "UNKNOWN",
                                  str(exc.details() or "")) from None

    # containers ------------------------------------------------------------------------------
    def container(self, cid: str) -> Any:
        """Containers/Get: the containerd.services.containers.v1.Container message."""
        req = containers_pb2.GetContainerRequest(id=cid)
        return self.call(self.containers.Get, req).container

    def has_container(self, cid: str) -> bool:
        try:
            self.container(cid)
        except ContainerdError as exc:
            if exc.code == "NOT_FOUND":
                return False
            raise
        return True

    def create_container(self, container: Any) -> None:
        req = containers_pb2.CreateContainerRequest(container=container)
        self.call(self.containers.Create, req)

    def delete_container(self, cid: str) -> None:
        self.call(self.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid))

    # snapshots -------------------------------------------------------------------------------
    def snapshot_parent(self, snapshotter: str, key: str) -> str:
        req = snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key)
        return str(self.call(self.snapshots.Stat, req).info.parent)

    def has_snapshot(self, snapshotter: str, key: str) -> bool:
        try:
            self.snapshot_parent(snapshotter, key)
        except ContainerdError as exc:
            if exc.code == "NOT_FOUND":
                return False
            raise
        return True

    def prepare(self, snapshotter: str, key: str, parent: str) -> list[Any]:
        req = snapshots_pb2.PrepareSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent)
        return list(self.call(self.snapshots.Prepare, req).mounts)

    def mounts(self, snapshotter: str, key: str) -> list[Any]:
        req = snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key)
        return list(self.call(self.snapshots.Mounts, req).mounts)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        req = snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
        self.call(self.snapshots.Remove, req)

    # tasks -----------------------------------------------------------------------------------
    def task(self, cid: str) -> Task | None:
        """Tasks/Get of the init process; None when there is no task."""
        try:
            p = self.call(self.tasks.Get, tasks_pb2.GetRequest(container_id=cid)).process
        except ContainerdError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        return Task(int(p.pid), _STATUS.get(int(p.status), "UNKNOWN"), int(p.exit_status))

    def pause(self, cid: str) -> None:
        self.call(self.tasks.Pause, tasks_pb2.PauseTaskRequest(container_id=cid))

    def resume(self, cid: str) -> None:
        self.call(self.tasks.Resume, tasks_pb2.ResumeTaskRequest(container_id=cid))

    def kill(self, cid: str, signal: int = 9) -> None:
        req = tasks_pb2.KillRequest(container_id=cid, signal=signal, all=True)
        self.call(self.tasks.Kill, req)

    def delete_task(self, cid: str) -> None:
        self.call(self.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=cid))

    def checkpoint(self, cid: str, options: any_pb2.Any, timeout: float = 600) -> None:
        req = tasks_pb2.CheckpointTaskRequest(container_id=cid, options=options)
        try:
            self.call(self.tasks.Checkpoint, req, timeout=timeout)
        except ContainerdError as exc:
            # containerd stores an (empty) archive blob after the shim's checkpoint and
            # refuses a duplicate one: the checkpoint itself is done then.
            if "already exists" in str(exc) and "content sha256:" in str(exc):
                return
            raise

    def create_task(self, cid: str, rootfs: Sequence[Any], stdout: str, stderr: str,
                    options: any_pb2.Any) -> None:
        req = tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=list(rootfs), stdout=stdout,
                                          stderr=stderr, options=options)
        self.call(self.tasks.Create, req, timeout=600)

    def start(self, cid: str) -> int:
        return int(self.call(self.tasks.Start, tasks_pb2.StartRequest(container_id=cid)).pid)

    def wait(self, cid: str, timeout: float) -> int:
        req = tasks_pb2.WaitRequest(container_id=cid)
        return int(self.call(self.tasks.Wait, req, timeout=timeout).exit_status)

    def remove_task(self, cid: str) -> None:
        """Kill (if alive) and delete the task; quiet when there is none. A paused task is
        killed first and then thawed, so it never runs again."""
        t = self.task(cid)
        if t is None:
            return
        if t.status != "STOPPED":
            # kill before resuming a paused task: it dies as it thaws, without running
            with contextlib.suppress(ContainerdError):
                self.kill(cid)
            if t.status == "PAUSED":
                with contextlib.suppress(ContainerdError):
                    self.resume(cid)
            with contextlib.suppress(ContainerdError):
                self.wait(cid, timeout=30)
        with contextlib.suppress(ContainerdError):
            self.delete_task(cid)


def ctr(address: str, namespace: str, *args: str, stdin: Any = None, stdout: Any = None,
        timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    """``ctr --address A -n NS args`` (image export/import)."""
    return subprocess.run(["ctr", "--address", address, "-n", namespace, *args], stdin=stdin,
                          stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, check=False)


@contextlib.contextmanager
def connect(address: str, namespace: str) -> Iterator[Containerd]:
    """A :class:`Containerd` on the socket ``address`` (a path or a unix:// URI)."""
    target = address if "://" in address else f"unix://{address}"
    channel = grpc.insecure_channel(target)
    try:
        yield Containerd(channel, address.removeprefix("unix://"), namespace)
    finally:
        channel.close()
