"""The ``containerd.task.v2.Task`` service: decodes requests, calls containers, encodes replies.

Strategy: mirrors containerd ``runtime/v2/runc/task/service.go`` but stays thin: each handler
decodes its request message, finds the container, calls one container operation and builds
the response. Errors are raised as typed :mod:`shim.errors` and mapped to status codes once,
by :func:`shim.errors.to_status` at the ttrpc boundary. :meth:`TaskService.handlers` pairs
every RPC with its request type and handler (registration and tests read the same data).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError, Message

from shim.api.containerd.runc.options import oci_pb2
from shim.api.containerd.task.v2 import shim_pb2 as api
from shim.api.containerd.types.task import task_pb2
from shim.bundle import (
    CRIU_WORK_DIR,
    RESTORE_ANNOTATION,
    Spec,
    read_spec,
    spec_annotations,
)
from shim.cleanup import write_runtime_options
from shim.container import Container, ContainerConfig, Mount, _timestamp
from shim.errors import InvalidArgument, NotFound
from shim.events import Publisher
from shim.reaper import Reaper
from shim.runtime import Runc, RuntimeConfig
from shim.runtime._runc import DEFAULT_ROOT
from shim.stdio import IOConfig
from shim.taskoptions import RESTORE_OPTIONS, TaskOptions
from shim.taskoptions import decode as decode_task_options
from shim.ttrpc import RequestContext
from shim.typeurl import OCI_RESOURCES, pack, type_name

if TYPE_CHECKING:
    from shim.checkpoint.plan import RestoreSource

__all__ = ["SERVICE", "TaskService"]

log = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"

M = TypeVar("M", bound=Message)


@dataclass(slots=True)
class TaskService:
    """Serves the Task API for every container of this shim."""

    namespace: str
    reaper: Reaper
    publisher: Publisher
    shutdown_requested: asyncio.Event = field(default_factory=asyncio.Event)
    containers: dict[str, Container] = field(default_factory=dict)

    # -- registration ---------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[RequestContext, bytes], Awaitable[bytes]]]:
        """ttrpc handlers for every method of the service, by method name."""
        return {
            "State": _codec(api.StateRequest, self.state),
            "Create": _codec(api.CreateTaskRequest, self.create),
            "Start": _codec(api.StartRequest, self.start),
            "Delete": _codec(api.DeleteRequest, self.delete),
            "Pids": _codec(api.PidsRequest, self.pids),
            "Pause": _codec(api.PauseRequest, self.pause),
            "Resume": _codec(api.ResumeRequest, self.resume),
            "Checkpoint": _codec(api.CheckpointTaskRequest, self.checkpoint),
            "Kill": _codec(api.KillRequest, self.kill),
            "Exec": _codec(api.ExecProcessRequest, self.exec),
            "ResizePty": _codec(api.ResizePtyRequest, self.resize_pty),
            "CloseIO": _codec(api.CloseIORequest, self.close_io),
            "Update": _codec(api.UpdateTaskRequest, self.update),
            "Wait": _codec(api.WaitRequest, self.wait),
            "Stats": _codec(api.StatsRequest, self.stats),
            "Connect": _codec(api.ConnectRequest, self.connect),
            "Shutdown": _codec(api.ShutdownRequest, self.shutdown),
        }

    def _get(self, cid: str) -> Container:
        try:
            return self.containers[cid]
        except KeyError:
            raise NotFound(f"container {cid} not created") from None

    # -- methods --------------------------------------------------------------------------

    async def create(self, req: api.CreateTaskRequest) -> api.CreateTaskResponse:
        if req.id in self.containers:
            raise InvalidArgument(f"container {req.id} already exists in this shim")
        _check_bundle(req.bundle)  # before anything is written, mounted or run
        options = decode_task_options(req.options)
        runtime_config = RuntimeConfig(
            binary=options.binary_name or "runc",
            root=options.root or DEFAULT_ROOT,
            namespace=self.namespace,
            criu_path=options.criu_path,
            systemd_cgroup=options.systemd_cgroup,
        )
        write_runtime_options(
            req.bundle,
            {
                "binary": runtime_config.binary,
                "root": runtime_config.root,
                "systemd_cgroup": "true" if runtime_config.systemd_cgroup else "false",
            },
        )
        runtime = Runc(self.reaper, runtime_config, Path(req.bundle))
        spec = read_spec(Path(req.bundle))  # read once: for the restore annotation and Create
        config = ContainerConfig(
            id=req.id,
            bundle=Path(req.bundle),
            namespace=self.namespace,
            io=IOConfig(req.stdin, req.stdout, req.stderr, req.terminal),
            rootfs=tuple(Mount(m.type, m.source, tuple(m.options)) for m in req.rootfs),
            no_pivot=options.no_pivot_root,
            no_new_keyring=options.no_new_keyring,
            io_owner=(options.io_uid, options.io_gid),
            restore=_restore_source(req, options, spec),
        )
        container = await Container.create(
            config, runtime, self.reaper, self.publisher.publish, spec=spec
        )
        self.containers[req.id] = container
        return api.CreateTaskResponse(pid=container.init.pid)

    async def start(self, req: api.StartRequest) -> api.StartResponse:
        pid = await self._get(req.id).start(req.exec_id)
        return api.StartResponse(pid=pid)

    async def delete(self, req: api.DeleteRequest) -> api.DeleteResponse:
        container = self._get(req.id)
        p = await container.delete(req.exec_id)
        if not req.exec_id:
            self.containers.pop(req.id, None)
        return api.DeleteResponse(
            pid=p.pid, exit_status=p.exit_status, exited_at=_timestamp(p.exited_at)
        )

    async def state(self, req: api.StateRequest) -> api.StateResponse:
        container = self._get(req.id)
        p = container.process(req.exec_id)
        cfg = p.io_config
        return api.StateResponse(
            id=p.id,
            bundle=str(container.bundle),
            pid=p.pid,
            status=int(p.status),  # type: ignore[arg-type]
            stdin=cfg.stdin,
            stdout=cfg.stdout,
            stderr=cfg.stderr,
            terminal=cfg.terminal,
            exit_status=p.exit_status,
            exited_at=_timestamp(p.exited_at),
        )

    async def pids(self, req: api.PidsRequest) -> api.PidsResponse:
        infos = []
        for pid, exec_id in await self._get(req.id).pids():
            info = task_pb2.ProcessInfo(pid=pid)
            if exec_id:
                info.info.CopyFrom(pack(oci_pb2.ProcessDetails(exec_id=exec_id)))
            infos.append(info)
        return api.PidsResponse(processes=infos)

    async def pause(self, req: api.PauseRequest) -> Empty:
        await self._get(req.id).pause()
        return Empty()

    async def resume(self, req: api.ResumeRequest) -> Empty:
        await self._get(req.id).resume()
        return Empty()

    async def checkpoint(self, req: api.CheckpointTaskRequest) -> Empty:
        container = self._get(req.id)  # before the checkpoint machinery (~2 MiB) is loaded
        from shim.checkpoint.plan import plan_checkpoint

        plan = plan_checkpoint(
            req.path,
            req.options if req.HasField("options") else None,
            container.annotations(),
            default_work_dir=str(container.bundle / CRIU_WORK_DIR),
        )
        await container.checkpoint(plan)
        return Empty()

    async def kill(self, req: api.KillRequest) -> Empty:
        await self._get(req.id).kill(req.exec_id, req.signal, req.all)
        return Empty()

    async def exec(self, req: api.ExecProcessRequest) -> Empty:
        container = self._get(req.id)
        if not req.exec_id:
            raise InvalidArgument("exec id must not be empty")
        io = IOConfig(req.stdin, req.stdout, req.stderr, req.terminal)
        await container.add_exec(req.exec_id, io, req.spec.value)
        return Empty()

    async def resize_pty(self, req: api.ResizePtyRequest) -> Empty:
        self._get(req.id).resize(req.exec_id, req.width, req.height)
        return Empty()

    async def close_io(self, req: api.CloseIORequest) -> Empty:
        if req.stdin:
            await self._get(req.id).close_io(req.exec_id)
        return Empty()

    async def update(self, req: api.UpdateTaskRequest) -> Empty:
        container = self._get(req.id)
        if req.resources.type_url not in ("", OCI_RESOURCES):
            raise InvalidArgument(f"unsupported resources type {req.resources.type_url}")
        try:
            json.loads(req.resources.value or b"{}")
        except ValueError as exc:
            raise InvalidArgument(f"resources are not valid JSON: {exc}") from exc
        await container.update(req.resources.value or b"{}")
        return Empty()

    async def wait(self, req: api.WaitRequest) -> api.WaitResponse:
        p = await self._get(req.id).wait(req.exec_id)
        return api.WaitResponse(exit_status=p.exit_status, exited_at=_timestamp(p.exited_at))

    async def stats(self, req: api.StatsRequest) -> api.StatsResponse:
        from shim import metrics  # cgroup stats types load only when stats are asked for

        container = self._get(req.id)
        data = metrics.collect(container.cgroups_path(), container.init.pid)
        return api.StatsResponse(stats=pack(data))

    async def connect(self, req: api.ConnectRequest) -> api.ConnectResponse:
        container = self.containers.get(req.id)
        return api.ConnectResponse(
            shim_pid=os.getpid(), task_pid=container.init.pid if container else 0
        )

    async def shutdown(self, req: api.ShutdownRequest) -> Empty:
        if not self.containers:
            self.shutdown_requested.set()
        return Empty()


def _check_bundle(bundle: str) -> None:
    """A Create's bundle must be an absolute path to an existing directory, without ``..``:
    an empty or relative one would resolve against the shim's working directory, which is
    the bundle of the container it already serves.

    Raises:
        InvalidArgument: it is not.
    """
    if not bundle or not os.path.isabs(bundle) or ".." in bundle.split("/"):
        raise InvalidArgument(f"bundle {bundle!r} is not an absolute path")
    if not os.path.isdir(bundle):
        raise InvalidArgument(f"bundle {bundle} is not a directory")


def _restore_source(
    req: api.CreateTaskRequest, options: TaskOptions | None = None, spec: Spec | None = None
) -> RestoreSource | None:
    """What to restore from (:func:`shim.checkpoint.plan.restore_source`): the request's
    checkpoint, else the task options' ``criu_image_path`` (what containerd's client sends a
    runtime not named ``io.containerd.runc*`` in ``CreateOptions``); None for a fresh
    container, without loading the checkpoint machinery. ``spec``: the bundle's config.json
    if the caller has read it already."""
    if options is None:
        options = decode_task_options(req.options)
    checkpoint = req.checkpoint or options.criu_image_path
    annotations = spec_annotations(read_spec(Path(req.bundle)) if spec is None else spec)
    if (not checkpoint and type_name(req.options) != RESTORE_OPTIONS
            and RESTORE_ANNOTATION not in annotations):
        return None
    from shim.checkpoint.plan import restore_source  # the checkpoint machinery: restores only

    source = restore_source(
        checkpoint, req.options, annotations, work_dir=options.criu_work_path
    )
    if source is not None and annotations.get(RESTORE_ANNOTATION):
        _check_annotated_checkpoint(source.images_dir)
    return source


def _check_annotated_checkpoint(path: str) -> None:
    """The annotation :data:`~shim.bundle.RESTORE_ANNOTATION` may be set by whoever may set
    a container's allow-listed annotations, so the directory it names is used only if it is
    what the CRI endpoint makes (:mod:`shim.cri._extract`): a real directory, not a symlink
    nor below one, owned by root (this shim's user), mode 0700. Anything else could hand
    CRIU images someone else wrote.

    Raises:
        InvalidArgument: it is not, naming the path and why.
    """
    what = f"annotation {RESTORE_ANNOTATION}: checkpoint directory {path}"
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise InvalidArgument(f"{what}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise InvalidArgument(f"{what} is a symlink; refused")
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{what} is not a directory")
    if os.path.realpath(path) != os.path.normpath(path):
        raise InvalidArgument(f"{what} lies below a symlink ({os.path.realpath(path)}); refused")
    if st.st_uid != os.geteuid():
        raise InvalidArgument(
            f"{what} is owned by uid {st.st_uid}, not {os.geteuid()}; only a directory of"
            " the shim's own user is trusted")
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise InvalidArgument(
            f"{what} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700; only a private"
            " directory is trusted")


def _codec(
    req_type: type[M], fn: Callable[[M], Awaitable[Message]]
) -> Callable[[RequestContext, bytes], Awaitable[bytes]]:
    """Wrap a typed method as a ttrpc handler: bytes in, bytes out."""

    async def handle(ctx: RequestContext, payload: bytes) -> bytes:
        req = req_type()
        try:
            req.ParseFromString(payload)
        except DecodeError as exc:
            raise InvalidArgument(f"cannot decode {req_type.DESCRIPTOR.full_name}: {exc}") from exc
        reply = await fn(req)
        data: bytes = reply.SerializeToString()
        return data

    return handle
