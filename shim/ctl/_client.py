"""A small synchronous client of containerd's gRPC API (Tasks, Containers, Snapshots).

Strategy: this is the only module of the project that imports ``grpc`` (the daemon never
does; ``tests/test_ctl.py`` checks it). :func:`connect` is the factory: it opens a channel
to the unix socket and closes it on exit. Every call carries the namespace in the
``containerd-namespace`` metadata header, as containerd's Go client does, and every
``grpc.RpcError`` becomes a :class:`~shim.ctl._errors.CtlError` here, with containerd's
message kept verbatim. Results are plain frozen values, not protobuf messages, except the
rootfs mounts, which are handed back to Tasks/Create as they came.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2

from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shim.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from shim.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from shim.state import TaskStatus

from ._errors import CtlError

__all__ = [
    "NAMESPACE_HEADER",
    "Client",
    "ContainerInfo",
    "Descriptor",
    "TaskInfo",
    "TaskStatus",
    "connect",
    "grpc_target",
]

NAMESPACE_HEADER = "containerd-namespace"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One line of ``pyrunc tasks``."""

    id: str
    pid: int
    status: TaskStatus


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content-store blob (containerd.types.Descriptor)."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What a restore needs from a container record."""

    id: str
    runtime: str
    snapshotter: str
    snapshot_key: str
    runtime_options: Any = None  # google.protobuf.Any, None when the record has none


def grpc_target(address: str) -> str:
    """The grpc target for containerd's ``address`` (a socket path or a ``unix://`` URI)."""
    if "://" in address:
        return address
    return f"unix://{address}"


def _status_name(value: int) -> TaskStatus:
    """``containerd.v1.types.Status`` as :class:`shim.state.TaskStatus` (UNKNOWN for a value
    this tool does not know)."""
    try:
        return TaskStatus(value)
    except ValueError:
        return TaskStatus.UNKNOWN


class Client:
    """containerd's Tasks, Containers and Snapshots services for one namespace.

    Made by :func:`connect`; not thread-safe. Methods raise :class:`CtlError`.
    """

    def __init__(self, channel: Any, address: str, namespace: str) -> None:
        self._tasks = tasks_pb2_grpc.TasksStub(channel)
        self._containers = containers_pb2_grpc.ContainersStub(channel)
        self._snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self._metadata = ((NAMESPACE_HEADER, namespace),)
        self.address = address
        self.namespace = namespace

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            name = str(code.name) if code is not None else "UNKNOWN"
            details = str(exc.details() or "")
            context = ""
            if code == grpc.StatusCode.UNAVAILABLE:
                context = f"cannot reach containerd at {self.address}"
            raise CtlError(name, details, context) from None

    # Tasks --------------------------------------------------------------------------------

    def list_tasks(self) -> list[TaskInfo]:
        """Tasks/List: every task of the namespace (init processes)."""
        resp = self._call(self._tasks.List, tasks_pb2.ListTasksRequest())
        return [
            TaskInfo(id=str(t.container_id) or str(t.id), pid=int(t.pid),
                     status=_status_name(int(t.status)))
            for t in resp.tasks
        ]

    def checkpoint(self, container_id: str, options: any_pb2.Any) -> list[Descriptor]:
        """Tasks/Checkpoint with ``options`` forwarded to the shim.

        Returns:
            The blobs containerd wrote (checkpoint tarball, spec); may be empty.
        """
        req = tasks_pb2.CheckpointTaskRequest(container_id=container_id, options=options)
        resp = self._call(self._tasks.Checkpoint, req)
        return [
            Descriptor(media_type=str(d.media_type), digest=str(d.digest), size=int(d.size))
            for d in resp.descriptors
        ]

    def create_task(
        self,
        container_id: str,
        *,
        rootfs: Sequence[Any],
        stdout: str,
        stderr: str,
        options: any_pb2.Any,
        stdin: str = "",
        terminal: bool = False,
    ) -> int:
        """Tasks/Create; returns the pid containerd reports (0 for a restore, whose process
        exists only after Start)."""
        req = tasks_pb2.CreateTaskRequest(
            container_id=container_id, rootfs=list(rootfs), stdin=stdin, stdout=stdout,
            stderr=stderr, terminal=terminal, options=options,
        )
        return int(self._call(self._tasks.Create, req).pid)

    def start(self, container_id: str) -> int:
        """Tasks/Start of the init process; returns its pid."""
        req = tasks_pb2.StartRequest(container_id=container_id)
        return int(self._call(self._tasks.Start, req).pid)

    def wait(self, container_id: str) -> int:
        """Tasks/Wait: block until the init process exits; returns its exit status."""
        req = tasks_pb2.WaitRequest(container_id=container_id)
        return int(self._call(self._tasks.Wait, req).exit_status)

    def delete_task(self, container_id: str) -> int:
        """Tasks/Delete; returns the exit status containerd recorded."""
        req = tasks_pb2.DeleteTaskRequest(container_id=container_id)
        return int(self._call(self._tasks.Delete, req).exit_status)

    # Containers and snapshots ---------------------------------------------------------------

    def get_container(self, container_id: str) -> ContainerInfo:
        """Containers/Get."""
        req = containers_pb2.GetContainerRequest(id=container_id)
        c = self._call(self._containers.Get, req).container
        return ContainerInfo(
            id=str(c.id), runtime=str(c.runtime.name), snapshotter=str(c.snapshotter),
            snapshot_key=str(c.snapshot_key),
            runtime_options=c.runtime.options if c.runtime.HasField("options") else None,
        )

    def mounts(self, snapshotter: str, key: str) -> list[Any]:
        """Snapshots/Mounts: the containerd.types.Mount messages of snapshot ``key``."""
        req = snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key)
        return list(self._call(self._snapshots.Mounts, req).mounts)


@contextlib.contextmanager
def connect(address: str, namespace: str) -> Iterator[Client]:
    """A :class:`Client` on containerd's socket ``address``; the channel closes on exit.

    Nothing is sent until the first call, so an absent socket shows up as a
    :class:`CtlError` (``UNAVAILABLE``) from that call.
    """
    channel = grpc.insecure_channel(grpc_target(address))
    try:
        yield Client(channel, address, namespace)
    finally:
        channel.close()
