"""A container and its processes: the init process, its execs, and their lifecycles.

Strategy: mirrors containerd ``runtime/v2/runc/container.go`` and ``pkg/process/init.go`` /
``exec.go``. Public methods take the container's lock and delegate to the process's state
(:mod:`shim.state`); the reaper's exit callbacks take the same lock, so a start and the exit of
the process it started are handled in order and TaskStart is queued before TaskExit. The init
exit is published only after every exec of the container has exited (bounded wait).
Work the states ask for lives in the ``do_*`` methods; nothing here maps errors to codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from signal import SIGKILL
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from shim import bundle as oci
from shim.api.containerd.events import task_pb2 as events
from shim.cgroups import FreezerState, controller_paths, freezer_state
from shim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from shim.mount import mount_all, unmount_all
from shim.oom import OomWatch
from shim.oom import watch as watch_oom
from shim.reaper import Exit, Reaper
from shim.runtime import CreateOpts, Runtime
from shim.spawn import Child
from shim.state import (
    Created,
    CreatedFromCheckpoint,
    ExecCreated,
    Paused,
    State,
    TaskStatus,
    check_transition,
)
from shim.stdio import IOConfig, ProcessIO

# The checkpoint machinery (plan, runner, CRIU client: ~2 MiB and 20 modules) is imported
# where a checkpoint or restore needs it, not by every shim: those imports are local.
if TYPE_CHECKING:
    from shim.checkpoint.netrestore import NetworkRestore
    from shim.checkpoint.plan import CheckpointPlan, RestoreSource
    from shim.checkpoint.runner import LazyDump

__all__ = [
    "Container",
    "ContainerConfig",
    "ExecProcess",
    "InitProcess",
    "Mount",
    "ProcessBase",
]

log = logging.getLogger(__name__)

Publish = Callable[[str, Message], None]

_EXEC_EXIT_WAIT = 5.0  # how long the init exit waits for the execs' exits
_OUTPUT_FLUSH_WAIT = 2.0  # how long an exit waits for the last output to be copied
_ABORT_WAIT = 120.0  # how long a Kill/Delete waits for an aborted restore to clean up
_SIGKILL = 9


@dataclass(frozen=True, slots=True)
class Mount:
    """One ``containerd.types.Mount`` of the rootfs."""

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """What Create asks for, decoded by the service."""

    id: str
    bundle: Path
    namespace: str
    io: IOConfig
    rootfs: tuple[Mount, ...] = ()
    no_pivot: bool = False
    no_new_keyring: bool = False
    io_owner: tuple[int, int] = (0, 0)  # uid, gid of the processes' pipes (runc io_uid/io_gid)
    restore: RestoreSource | None = None


class ProcessBase:
    """State, pid, stdio and exit of one process (init or exec)."""

    def __init__(self, container: Container, id: str, io_config: IOConfig, state: State) -> None:
        self.container = container
        self.id = id
        self.io_config = io_config
        self.state = state
        self.pid = 0
        self.io: ProcessIO | None = None
        self.exit_status = 0
        self.exited_at: float | None = None
        self.exited = asyncio.Event()

    @property
    def status(self) -> TaskStatus:
        return self.state.status

    def transition(self, target: type[State] | State) -> None:
        self.state = check_transition(self.state, target)

    def record_exit(self, ex: Exit) -> None:
        """Called under the container lock when the reaper reports this process's exit."""
        self.exit_status = ex.status
        self.exited_at = ex.timestamp
        self.state.exited(self)
        self.exited.set()

    def _watch(self) -> None:
        fut = self.container.reaper.watch(self.pid)
        fut.add_done_callback(self._exit_arrived)

    def _exit_arrived(self, fut: asyncio.Future[Exit]) -> None:
        if not fut.cancelled():
            self.container.track(self._handle_exit(fut.result()))

    async def _handle_exit(self, ex: Exit) -> None:
        """Once the last output is copied: record the exit and publish TaskExit, under the
        container lock (so it comes after the TaskStart of the same process)."""
        c = self.container
        await self.wait_output()
        async with c.lock:
            self.record_exit(ex)
            c.publish(
                "/tasks/exit",
                events.TaskExit(
                    container_id=c.id,
                    id=self.id,
                    pid=self.pid,
                    exit_status=ex.status,
                    exited_at=_timestamp(ex.timestamp),
                ),
            )

    async def _open_io(self) -> ProcessIO:
        c = self.container
        self.io = await ProcessIO.open(
            self.io_config,
            c.reaper,
            container_id=c.id,
            namespace=c.config.namespace,
            owner=c.config.io_owner,
        )
        return self.io

    async def wait_output(self) -> None:
        if self.io is not None:
            await self.io.wait_output(_OUTPUT_FLUSH_WAIT)

    # The work states ask for (shim.state.Process); each kind of process supplies its own.
    async def do_start(self) -> None:
        raise NotImplementedError

    async def do_delete(self) -> None:
        raise NotImplementedError

    async def do_kill(self, signal: int, all: bool) -> None:
        raise NotImplementedError

    async def do_restore(self, source: RestoreSource, network: NetworkRestore) -> None:
        raise NotImplementedError

    async def do_pause(self) -> None:
        raise NotImplementedError

    async def do_resume(self) -> None:
        raise NotImplementedError

    async def do_checkpoint(self, plan: CheckpointPlan) -> None:
        raise NotImplementedError


class InitProcess(ProcessBase):
    """The container's init process, created by ``runc create``."""

    def __init__(self, container: Container, id: str, io_config: IOConfig, state: State) -> None:
        super().__init__(container, id, io_config, state)
        self._oom: OomWatch | None = None

    def _watch(self) -> None:
        """Watch the init's exit and its memory cgroup's OOMs (``/tasks/oom``)."""
        super()._watch()
        c = self.container
        memory = controller_paths(oci.cgroups_path(c.spec), self.pid).get("memory")
        if memory is not None and self._oom is None:
            self._oom = watch_oom(
                memory, lambda: c.publish("/tasks/oom", events.TaskOOM(container_id=c.id))
            )

    async def do_create(self) -> None:
        c = self.container
        io = await self._open_io()
        pid_file = c.bundle / "init.pid"
        opts = CreateOpts(
            c.bundle,
            pid_file,
            console_socket=io.console_socket,
            no_pivot=c.config.no_pivot,
            no_new_keyring=c.config.no_new_keyring,
        )
        await c.runtime.create(c.id, opts, io.runtime_stdio())
        self.pid = int(pid_file.read_text())
        self._watch()
        await io.started()

    async def do_start(self) -> None:
        await self.container.runtime.start(self.container.id)

    async def do_restore(self, source: RestoreSource, network: NetworkRestore) -> None:
        """Start of a container created from a checkpoint: ``runc restore --detach``, with
        ``network`` (entered by the state) rebuilding its network."""
        from shim.checkpoint import runner

        c = self.container
        assert self.io is not None
        restored = await runner.restore(
            c.runtime,
            c.reaper,
            c.id,
            c.bundle,
            source,
            c.annotations(),
            self.io.runtime_stdio(),
            console_socket=self.io.console_socket,
            no_pivot=c.config.no_pivot,
            cgroups_path=c.cgroups_path(),
        )
        await network.restored(restored.pid)
        self.pid = restored.pid
        self._watch()
        await self.io.started()
        if restored.lazy_daemon is not None:
            c.track(_log_exit(restored.lazy_daemon, f"criu lazy-pages for {c.id}"))

    async def do_checkpoint(self, plan: CheckpointPlan) -> None:
        """Dump the container; whatever happens, leave it as it was (running or paused)
        unless the plan says exit and the dump succeeded."""
        from shim.checkpoint import runner

        c = self.container
        was_paused = isinstance(self.state, Paused)
        try:
            lazy = await runner.checkpoint(
                c.runtime, c.reaper, c.id, self.pid, c.bundle, c.annotations(), plan
            )
        except BaseException:
            await self._restore_freezer(was_paused)
            raise
        if lazy is not None:
            c.track(self._finish_lazy_dump(lazy, was_paused))
        elif plan.leave_running:
            await self._restore_freezer(was_paused)
        c.publish(
            "/tasks/checkpointed",
            events.TaskCheckpointed(container_id=c.id, checkpoint=plan.images_dir),
        )

    async def _finish_lazy_dump(self, lazy: LazyDump, was_paused: bool) -> None:
        """A lazy dump ends when the restoring side has fetched every page."""
        await _log_exit(lazy.child, f"lazy-pages dump of {self.container.id}")
        if lazy.plan.leave_running:
            async with self.container.lock:
                await self._restore_freezer(was_paused)

    async def _restore_freezer(self, was_paused: bool) -> None:
        """Put the freezer back as it was before a dump: CRIU thaws what it froze, but a
        killed or failed CRIU can leave the container frozen, and a dump of a paused
        container must not resume it."""
        c = self.container
        state = freezer_state(oci.cgroups_path(c.spec), self.pid)
        if state is None:
            return
        frozen = state is not FreezerState.THAWED
        if was_paused and not frozen:
            await c.runtime.pause(c.id)
        elif not was_paused and frozen:
            log.warning("container %s was left frozen after a checkpoint; thawing it", c.id)
            await c.runtime.resume(c.id)

    async def do_delete(self) -> None:
        c = self.container
        if self._oom is not None:
            self._oom.close()
            self._oom = None
        with contextlib.suppress(NotFound):
            await c.runtime.delete(c.id, force=True)
        if self.io is not None:
            self.io.close()
        unmount_all(str(c.bundle / "rootfs"))

    async def do_kill(self, signal: int, all: bool) -> None:
        await self.container.runtime.kill(self.container.id, signal, all=all)

    async def do_pause(self) -> None:
        await self.container.runtime.pause(self.container.id)

    async def do_resume(self) -> None:
        await self.container.runtime.resume(self.container.id)

    async def _handle_exit(self, ex: Exit) -> None:
        """Without a PID namespace of its own, the container's other processes do not die
        with its init: kill them all (through its cgroup, ``runc kill --all``) before the
        init's exit is published, as containerd's runc shim does (``ShouldKillAllOnExit``)."""
        c = self.container
        if not oci.own_pid_namespace(c.spec):
            try:
                await c.runtime.kill(c.id, SIGKILL, all=True)
            except Exception:
                log.exception("container %s: killing the init's other processes failed", c.id)
        running = [e.exited.wait() for e in c.execs.values() if e.pid and not e.exited.is_set()]
        if running:
            await asyncio.wait(
                [asyncio.ensure_future(w) for w in running], timeout=_EXEC_EXIT_WAIT
            )
        await super()._handle_exit(ex)


class ExecProcess(ProcessBase):
    """A process added with Exec and started with ``runc exec --detach``."""

    def __init__(self, container: Container, id: str, io_config: IOConfig, spec: bytes) -> None:
        super().__init__(container, id, io_config, ExecCreated())
        self.spec = spec

    async def do_start(self) -> None:
        """``runc exec --detach``. If it fails, the exec's stdio is closed at once (the
        client waits for its FIFOs' EOF before it reports the failure) and a Wait on it
        returns, as containerd's runc shim closes its ``waitBlock``; it stays created."""
        c = self.container
        io = await self._open_io()
        spec_path = c.bundle / f".exec-{self.id}.json"
        pid_file = c.bundle / f"{self.id}.pid"
        spec_path.write_bytes(self.spec)
        try:
            await c.runtime.exec(
                c.id, spec_path, pid_file, io.runtime_stdio(), console_socket=io.console_socket
            )
        except BaseException:
            io.close()
            self.io = None
            self.exited.set()
            raise
        finally:
            spec_path.unlink(missing_ok=True)
        self.pid = int(pid_file.read_text())
        self._watch()
        await io.started()

    async def do_delete(self) -> None:
        if self.io is not None:
            self.io.close()
        self.container.execs.pop(self.id, None)

    async def do_kill(self, signal: int, all: bool) -> None:
        if not self.pid:
            raise NotFound(f"exec {self.id} is not started")
        try:
            os.kill(self.pid, signal)
        except ProcessLookupError as exc:
            raise NotFound("process already finished") from exc


class Container:
    """One container served by this shim. Make it with :meth:`create`."""

    def __init__(
        self, config: ContainerConfig, runtime: Runtime, reaper: Reaper, publish: Publish
    ) -> None:
        self.config = config
        self.id = config.id
        self.bundle = config.bundle
        self.runtime = runtime
        self.reaper = reaper
        self.publish = publish
        self.lock = asyncio.Lock()
        self.spec: oci.Spec = {}
        self.init = InitProcess(self, config.id, config.io, Created())
        self.execs: dict[str, ExecProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._restoring: asyncio.Task[None] | None = None  # Start's restore, while in flight
        self._abort_signal = 0  # the signal of the Kill/Delete that aborted it

    @classmethod
    async def create(
        cls,
        config: ContainerConfig,
        runtime: Runtime,
        reaper: Reaper,
        publish: Publish,
        *,
        spec: oci.Spec | None = None,
    ) -> Container:
        """Mount the rootfs, ``runc create`` the container and publish TaskCreate.
        ``spec``: the bundle's config.json as the caller read it (else it is read here).

        On failure everything done so far is undone and the error raised.
        """
        c = cls(config, runtime, reaper, publish)
        rootfs = str(config.bundle / "rootfs")
        mounted = False  # unmount only what this Create mounted
        if config.rootfs:
            os.makedirs(rootfs, exist_ok=True)
            mount_all([(m.type, m.source, m.options) for m in config.rootfs], rootfs)
            mounted = True
        try:
            if spec is None:
                spec = oci.read_spec(config.bundle)
            c.spec = oci.with_criu_config(spec, config.bundle)
            if config.restore is None:
                if c.spec is not spec:
                    oci.write_spec(config.bundle, c.spec)
                await c.init.do_create()
            else:  # nothing runs until Start restores it
                from shim.checkpoint.netrestore import network_restore

                await c.init._open_io()
                async with contextlib.AsyncExitStack() as stack:
                    # the network's rebuild service takes a while to start: start it now
                    network = await stack.enter_async_context(
                        network_restore(reaper, config.bundle, c.spec, config.restore.images_dir)
                    )
                    c.init.transition(CreatedFromCheckpoint(config.restore, network))
                    stack.pop_all()  # the state owns it now
        except BaseException:
            if c.init.io is not None:
                c.init.io.close()
            with contextlib.suppress(Exception):
                await runtime.delete(config.id, force=True)
            if mounted:
                unmount_all(rootfs)
            raise
        publish(
            "/tasks/create",
            events.TaskCreate(
                container_id=c.id,
                bundle=str(config.bundle),
                rootfs=[_mount_pb(m) for m in config.rootfs],
                io=events.TaskIO(
                    stdin=config.io.stdin,
                    stdout=config.io.stdout,
                    stderr=config.io.stderr,
                    terminal=config.io.terminal,
                ),
                checkpoint=config.restore.images_dir if config.restore else "",
                pid=c.init.pid,
            ),
        )
        return c

    def track(self, coro: Coroutine[object, object, None]) -> None:
        """Run background work (exit handlers, lazy transfers) as a task the container keeps
        a reference to, so it is not garbage-collected while it runs."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def process(self, exec_id: str) -> ProcessBase:
        """The init process for ``""``, else the exec with that id.

        Raises:
            NotFound: no such exec.
        """
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"process {exec_id} does not exist") from None

    # -- operations (lock, then delegate to the state) ------------------------------------

    async def start(self, exec_id: str) -> int:
        p = self.process(exec_id)
        async with self.lock:
            if exec_id and not self.init.state.can_exec():
                state = self.init.state.name
                raise FailedPrecondition(f"cannot start an exec in a {state} container")
            if isinstance(p.state, CreatedFromCheckpoint):
                await self._restore(p)
            else:
                await p.state.start(p)
            if exec_id:
                self.publish(
                    "/tasks/exec-started",
                    events.TaskExecStarted(container_id=self.id, exec_id=exec_id, pid=p.pid),
                )
            else:
                self.publish("/tasks/start", events.TaskStart(container_id=self.id, pid=p.pid))
            return p.pid

    async def _restore(self, p: ProcessBase) -> None:
        """Start's restore, as a task a Kill or Delete can abort (:meth:`_abort_restore`).
        A restore that is aborted or runs out of time (its ttrpc deadline or the runtime's
        limit) has had CRIU's processes, mounts and cgroups removed by the runner; the task
        then ends as stopped, its exit (128 + signal) published. Called under the lock."""
        task = asyncio.get_running_loop().create_task(p.state.start(p))
        self._restoring, self._abort_signal = task, 0
        try:
            await task
        except (asyncio.CancelledError, TimeoutError) as exc:
            signal = self._abort_signal or _SIGKILL
            p.record_exit(Exit(0, 128 + signal, time.time()))
            self.publish(
                "/tasks/exit",
                events.TaskExit(
                    container_id=self.id,
                    id=p.id,
                    pid=0,
                    exit_status=p.exit_status,
                    exited_at=_timestamp(p.exited_at),
                ),
            )
            current = asyncio.current_task()
            if self._abort_signal and (current is None or not current.cancelling()):
                raise FailedPrecondition(
                    f"restore of {self.id} aborted by signal {self._abort_signal}"
                ) from exc
            raise
        finally:
            self._restoring = None

    async def _abort_restore(self, signal: int) -> bool:
        """If Start is restoring the init, cancel that restore (which kills CRIU's processes
        and removes what it mounted) and wait until it is over; True if there was one."""
        task = self._restoring
        if task is None or task.done():
            return False
        self._abort_signal = signal or _SIGKILL
        task.cancel()
        await asyncio.wait([task], timeout=_ABORT_WAIT)
        return True

    async def delete(self, exec_id: str) -> ProcessBase:
        p = self.process(exec_id)
        if not exec_id:
            await self._abort_restore(_SIGKILL)
        async with self.lock:
            await p.state.delete(p)
            if not exec_id:
                for e in list(self.execs.values()):
                    if e.io is not None:
                        e.io.close()
                self.publish(
                    "/tasks/delete",
                    events.TaskDelete(
                        container_id=self.id,
                        pid=p.pid,
                        exit_status=p.exit_status,
                        exited_at=_timestamp(p.exited_at),
                    ),
                )
        return p

    async def kill(self, exec_id: str, signal: int, all: bool) -> None:
        p = self.process(exec_id)
        if not exec_id and signal and await self._abort_restore(signal):
            return  # the restore is over, the task stopped (its exit published)
        async with self.lock:
            await p.state.kill(p, signal, all)

    async def pause(self) -> None:
        async with self.lock:
            await self.init.state.pause(self.init)
            self.publish("/tasks/paused", events.TaskPaused(container_id=self.id))

    async def resume(self) -> None:
        async with self.lock:
            await self.init.state.resume(self.init)
            self.publish("/tasks/resumed", events.TaskResumed(container_id=self.id))

    async def add_exec(self, exec_id: str, io: IOConfig, spec: bytes) -> None:
        """Register an exec; its process spec's ``terminal`` becomes the request's.

        Raises:
            InvalidArgument: the process spec is not a JSON object.
        """
        try:
            spec = oci.process_with_terminal(spec, io.terminal)
        except ValueError as exc:
            raise InvalidArgument(f"exec {exec_id}: bad process spec: {exc}") from exc
        async with self.lock:
            if exec_id in self.execs:
                raise AlreadyExists(f"id {exec_id} already exists")
            if not self.init.state.can_exec():
                raise FailedPrecondition(f"cannot exec in a {self.init.state.name} container")
            self.execs[exec_id] = ExecProcess(self, exec_id, io, spec)
            self.publish(
                "/tasks/exec-added", events.TaskExecAdded(container_id=self.id, exec_id=exec_id)
            )

    async def close_io(self, exec_id: str) -> None:
        p = self.process(exec_id)
        if p.io is not None:
            await p.io.close_stdin()

    def resize(self, exec_id: str, width: int, height: int) -> None:
        p = self.process(exec_id)
        if p.io is not None:
            p.io.resize(width, height)

    async def pids(self) -> list[tuple[int, str]]:
        """Every pid in the container with the exec id it belongs to ("" for none)."""
        by_pid = {e.pid: e.id for e in self.execs.values() if e.pid}
        return [(pid, by_pid.get(pid, "")) for pid in await self.runtime.ps(self.id)]

    async def checkpoint(self, plan: CheckpointPlan) -> None:
        async with self.lock:
            await self.init.state.checkpoint(self.init, plan)

    async def update(self, resources_json: bytes) -> None:
        async with self.lock:
            await self.runtime.update(self.id, resources_json)

    async def wait(self, exec_id: str) -> ProcessBase:
        p = self.process(exec_id)
        await p.exited.wait()
        return p

    def cgroups_path(self) -> str:
        return oci.cgroups_path(self.spec)

    def annotations(self) -> dict[str, str]:
        return oci.spec_annotations(self.spec)


async def _log_exit(child: Child, what: str) -> None:
    """Wait for a helper process the container started in the background; log a failure."""
    ex = await child.exited
    if ex.status != 0:
        log.error("%s ended with status %d", what, ex.status)
    else:
        log.info("%s finished", what)


def _mount_pb(m: Mount) -> Message:
    from shim.api.containerd.types import mount_pb2

    return mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options))


def _timestamp(t: float | None) -> Message:
    """A protobuf Timestamp; None (not exited) is Go's zero time, as containerd expects."""
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    if t is None:
        ts.seconds = -62135596800
    else:
        ts.seconds = int(t)
        ts.nanos = int((t - int(t)) * 1e9)
    return ts

