"""A container's network across checkpoint and restore: recorded at the dump, rebuilt at the
restore.

Strategy: runc always has CRIU leave a container's own network namespace out of the images
(``empty_ns`` has CLONE_NEWNET whatever ``--empty-ns`` says), so the shim records it beside
them (:func:`record`, :data:`shim.checkpoint.network.SNAPSHOT`) and rebuilds it at the restore
(:class:`NetworkRestore`): runc runs an OCI hook at CRIU's ``setup-namespaces`` step that asks
a rebuild service (:mod:`shim.nethook`) to build the recorded links, addresses and routes into
the new namespace before CRIU restores sockets. The service imports pyroute2 for ~130 ms, so it
starts at Create, while nothing runs yet; a warm template (:mod:`shim.warm`'s protocol) forks a
ready one when it can. A namespace that had nothing but ``lo`` needs no service: the hook
brings ``lo`` up alone, or, without inet sockets, the shim does after the restore (no hook at
all: a hook costs a process start inside the restore).

:class:`NetworkRestore` is an async context manager owned by the created-from-checkpoint state
(:class:`shim.state.CreatedFromCheckpoint`): entered at Create (the service starts), left when
Start's restore is over or the container is deleted without one (the service is stopped and its
socket removed). Entering a started one is a no-op unless its service has ended meanwhile (it
waits :data:`shim.nethook.SERVICE_DEADLINE` for its hook, so that nothing outlives a shim that
died between Create and Start): then it starts afresh, as a Start that failed and is retried
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from types import TracebackType

from shim.bundle import Spec, read_spec, with_restore_hook, write_spec
from shim.checkpoint.network import (
    SNAPSHOT,
    dump_snapshot,
    has_own_netns,
    is_loopback_only,
    joins_netns,
    load_snapshot,
    loopback_snapshot,
    nft_path,
    take_snapshot,
    tcp_unlock_argv,
)
from shim.errors import FailedPrecondition
from shim.nethook import (
    STOP,
    hook_argv,
    lo_up_argv,
    loopback_up,
    staging_path,
    template_argv,
)
from shim.reaper import Reaper
from shim.spawn import Child, run, spawn
from shim.warm import RUN_DIR, Unavailable, in_host_namespaces, request

__all__ = ["TEMPLATE_SOCKET", "NetworkRestore", "network_restore", "record"]

log = logging.getLogger(__name__)

TEMPLATE_SOCKET = f"{RUN_DIR}/nethook.sock"
"""Where the network rebuild template listens (:func:`shim.nethook.template`)."""
_TIMEOUT = 30.0


async def record(pid: int, images_dir: str, bundle: Path) -> None:
    """Record the network namespace of ``pid`` (a container's init) beside the images, if it
    has its own and the spec in ``bundle`` creates it (one joined by path, a CNI pod's, is not
    the container's: :func:`~shim.checkpoint.network.joins_netns`). A namespace with nothing
    but ``lo`` is read from /proc; anything else over rtnetlink, on a worker thread
    (:func:`~shim.checkpoint.network.take_snapshot`: ~4 ms; it was a child process importing
    pyroute2, 150-230 ms, inside a migration's frozen window).

    Raises:
        FailedPrecondition: the recording failed.
    """
    if not has_own_netns(pid) or joins_netns(read_spec(bundle)):
        return
    out = os.path.join(images_dir, SNAPSHOT)
    if (loopback := loopback_snapshot(pid)) is not None:
        with open(out, "wb") as f:
            f.write(dump_snapshot(loopback))
        return
    try:
        data = dump_snapshot(await asyncio.to_thread(take_snapshot, pid))
    except (OSError, ValueError, struct.error) as exc:
        raise FailedPrecondition(f"recording the container's network failed: {exc}") from exc
    with open(out, "wb") as f:
        f.write(data)


def network_restore(
    reaper: Reaper, bundle: Path, spec: Spec, images_dir: str
) -> NetworkRestore:
    """The network restore of a checkpoint in ``images_dir`` into the container of
    ``bundle`` whose spec is ``spec``; nothing starts until it is entered (which writes the
    spec with the hook it needs, or without any of ours)."""
    return NetworkRestore(reaper, bundle, spec, images_dir)


class NetworkRestore:
    """How a restore gets its network back: the hook named in the spec and, for more than
    ``lo``, the rebuild service it talks to; or, for an ``lo`` without sockets, the shim
    bringing it up after the restore (:meth:`restored`). Make it with
    :func:`network_restore`."""

    def __init__(self, reaper: Reaper, bundle: Path, spec: Spec, images_dir: str) -> None:
        self._reaper = reaper
        self._bundle = bundle
        self._spec = spec
        self._snapshot = os.path.join(images_dir, SNAPSHOT)
        self._started = False
        self._service: Child | None = None  # a service the shim started itself
        self._forked = -1  # a pidfd of the service a template forked, if it did
        self._socket = ""
        self._loopback_after = False
        self._tcp_locked = False  # the rebuild locks TCP (network.TCP_LOCK_TABLE)

    async def __aenter__(self) -> NetworkRestore:
        if self._started and self._service_ended():
            log.info("network rebuild service %s ended before the restore: starting another",
                     self._socket)
            self.close()
        if not self._started:
            await self._start()
            self._started = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _start(self) -> None:
        """Name the hook in the spec (runc runs it at ``setup-namespaces``) and, unless only
        ``lo`` needs to come up, start the rebuild service it talks to; without a recorded
        network, make sure no hook of ours is left in the spec."""
        self._loopback_after = False
        self._tcp_locked = False
        if joins_netns(self._spec):  # not the container's: a record (older archives) is ignored
            self._set_hook(None)
            return
        try:
            with open(self._snapshot, "rb") as f:
                snap = load_snapshot(f.read())
        except FileNotFoundError:
            self._set_hook(None)
            return
        if is_loopback_only(snap):
            up = any(link.up for link in snap.links)
            self._set_hook(lo_up_argv() if up and snap.sockets else None)
            self._loopback_after = up and not snap.sockets
            return
        self._tcp_locked = snap.sockets
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        sock = os.path.join(RUN_DIR, f"net-{os.urandom(6).hex()}.sock")
        self._set_hook(hook_argv(sock))
        self._socket = sock
        try:
            pid = await self._request_from_template()  # a warm service, forked by the template
            try:
                self._forked = os.pidfd_open(pid)  # for close(): the pid is not our child's
            except ProcessLookupError as gone:
                raise Unavailable(f"the service {pid} it forked ended at once",
                                  restart=False) from gone
        except Unavailable as exc:
            log.debug("network rebuild template: %s", exc)
            argv = [sys.executable, "-m", "shim.nethook", "serve", sock, self._snapshot]
            self._service = spawn(self._reaper, argv)
            if exc.restart and in_host_namespaces():  # warm for the next restore
                spawn(self._reaper, template_argv(TEMPLATE_SOCKET), setsid=True)

    def _service_ended(self) -> bool:
        """Whether the rebuild service has ended (e.g. at its deadline, no hook came)."""
        if self._service is not None:
            return self._service.exited.done()
        if self._forked >= 0:
            return bool(select.select([self._forked], [], [], 0)[0])  # readable: it exited
        return False

    def _set_hook(self, argv: list[str] | None) -> None:
        write_spec(self._bundle, with_restore_hook(self._spec, argv))

    async def _request_from_template(self) -> int:
        """Have the template fork a warm rebuild service; return its pid (the request
        blocks for up to 5 s, so it runs in a thread).

        Raises:
            Unavailable: no template (``restart``: worth starting one), or a stale one, or
                one in other namespaces.
        """
        fields: dict[str, object] = {"socket": self._socket, "snapshot": self._snapshot}
        return await asyncio.to_thread(
            request, TEMPLATE_SOCKET, fields, what="network rebuild template"
        )

    async def restored(self, pid: int) -> None:
        """After a successful restore of init ``pid``: unlock TCP if the rebuild locked it
        (CRIU has restored the sockets by now); bring ``lo`` up if that is left to the shim
        (a failure is only logged). No process is started for ``lo``: a thread of its own
        enters the namespace (:func:`shim.nethook.loopback_up`) and ends there."""
        if self._tcp_locked:
            self._tcp_locked = False
            try:
                result = await run(self._reaper, tcp_unlock_argv(pid), timeout=_TIMEOUT,
                                   env={**os.environ, "PATH": nft_path()})
                problem = result.stderr.decode(errors="replace").strip() if result.status else ""
            except (OSError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if problem:
                log.error("could not unlock TCP in the restored container (pid %d): %s", pid,
                          problem)
        if not self._loopback_after:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def bring_up() -> None:
            try:
                loopback_up(f"/proc/{pid}/ns/net")
            except BaseException as exc:  # reported to the loop, the thread just ends
                loop.call_soon_threadsafe(report, exc)
            else:
                loop.call_soon_threadsafe(report, None)

        # never a pool thread: this one is left in the container's namespace
        threading.Thread(target=bring_up, name=f"lo-up-{pid}", daemon=True).start()
        try:
            async with asyncio.timeout(_TIMEOUT):
                await done
        except (OSError, TimeoutError) as exc:
            log.warning("could not bring lo up in the restored container (pid %d): %s", pid, exc)

    def close(self) -> None:
        """End the rebuild service if no hook came (runc failed before it) and remove its
        socket. A service that listens already is told so (:data:`shim.nethook.STOP`; a
        connection without a request is not enough: the service ignores those, which
        others make too); one of ours still starting up is killed, and so is one a template
        forked that STOP did not reach (its socket not in place yet, its backlog full)."""
        self._started = False
        stopped = False
        if self._socket:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as conn:
                conn.setblocking(False)
                conn.connect(self._socket)
                conn.send(STOP)
                stopped = True
        if self._service is not None and not self._service.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._service.pid, 9)
        if self._forked >= 0:
            if not stopped:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._forked, signal.SIGKILL)
            os.close(self._forked)
        if self._socket:  # (and the name it is bound to before it is in place)
            for path in (self._socket, staging_path(self._socket)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._service, self._forked, self._socket = None, -1, ""
