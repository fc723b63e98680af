"""The shim daemon: one asyncio loop serving the Task API over ttrpc on fd 3.

Strategy: mirrors containerd ``runtime/v2/shim/shim.go`` (``run``/``serve``) and
``shim_unix.go``. The process becomes a child subreaper, logs to the bundle's ``log`` FIFO in
containerd's (logrus text) format, reaps on SIGCHLD through :mod:`shim.reaper`, shuts down on
SIGTERM/SIGINT or when ``Shutdown`` finds no container left, then sends queued events (bounded)
and removes its socket file. Where that file is, is read at start: containerd may remove the
bundle (and its ``address`` file) as soon as ``Shutdown`` is answered. Only peers of the
shim's own uid and gid are served (``SO_PEERCRED``), as the runc shim does.
"""

from __future__ import annotations

import sys

# asyncio imports ssl only to support TLS transports, which a shim never uses; blocking it
# keeps ~4.5 MiB out of every shim's RSS (asyncio handles a missing ssl module).
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from shim.warm import unlink_if_ours  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shim.flags import Flags
    from shim.reaper import Reaper
    from shim.service import TaskService
    from shim.ttrpc import Server

__all__ = ["rehearse", "serve", "serve_when_told"]

log = logging.getLogger("shim")

PR_SET_CHILD_SUBREAPER = 36
M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024
_TRIM_DELAY = 0.5  # after connections close, before free heap memory goes back to the OS
_SHUTDOWN_DRAIN = 5.0
# The C library, loaded once at import: in the fork server, so every daemon shares it instead
# of making its own (dlopen and a function object per call: CPU and private pages at start).
_LIBC = ctypes.CDLL(None, use_errno=True)
for _name in ("mallopt", "malloc_trim", "prctl"):
    getattr(_LIBC, _name)  # resolved here, once (ctypes keeps each on first use)


class LogrusFormatter(logging.Formatter):
    """``time="..." level=info msg="..." runtime=...``, as Go shims write."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs * 1e6):09d}Z"
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        level = {"WARNING": "warning", "CRITICAL": "fatal"}.get(
            record.levelname, record.levelname.lower()
        )
        escaped = msg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'time="{stamp}" level={level} msg="{escaped}" runtime=io.containerd.pyrunc.v2'


class FifoHandler(logging.Handler):
    """Writes whole lines to the ``log`` FIFO without ever blocking; drops when nobody reads."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        # containerd not reading (restarting) or the FIFO full: the line is dropped
        with contextlib.suppress(OSError):
            os.write(self.fd, (self.format(record) + "\n").encode())


# Made once, where this module is imported (the fork server): a handler made in each daemon
# would run logging's set-up code there (locks, weak references), writing to shared pages.
_LOG_HANDLER = FifoHandler(-1)
_LOG_HANDLER.setFormatter(LogrusFormatter())


def _setup_logging(debug: bool) -> None:
    root = logging.getLogger()
    level = logging.DEBUG if debug else logging.INFO
    if root.level != level:  # setLevel empties every logger's cache: in a forked daemon, a
        root.setLevel(level)  # write to each logger (the fork server's rehearsal set INFO)
    try:
        fd = os.open("log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    _LOG_HANDLER.fd = fd
    root.addHandler(_LOG_HANDLER)


def _fix_mmap_threshold() -> None:
    """Pin glibc's mmap threshold at its default (128 KiB). Left dynamic, freeing one large
    buffer (a 4 MiB ttrpc frame) raises it, and later large buffers then come from the heap,
    which keeps its high-water mark: RSS rose ~4 MiB after the first big frames."""
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.mallopt(M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


class _HeapTrimmer:
    """Give free heap memory back to the OS (``malloc_trim``) shortly after connections
    closed: a burst of connections (hundreds at once) otherwise leaves the heap at its
    high-water mark. One trim per burst, scheduled on the loop; a shim with no connection
    activity never wakes up for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: asyncio.TimerHandle | None = None
        self._trim: Callable[[int], int] | None
        try:
            self._trim = _LIBC.malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    def connection_closed(self) -> None:
        if self._trim is not None and self._pending is None:
            self._pending = self._loop.call_later(_TRIM_DELAY, self._run)

    def _run(self) -> None:
        self._pending = None
        if self._trim is not None:
            self._trim(0)


def _become_subreaper() -> None:
    if _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _task_server(loop: asyncio.AbstractEventLoop, service: TaskService) -> Server:
    """The ttrpc server of the Task API, as a daemon serves it (the fork server's rehearsal
    runs this same one)."""
    from shim.errors import to_status
    from shim.service import SERVICE
    from shim.ttrpc import Server

    trimmer = _HeapTrimmer(loop)
    server = Server(
        error_mapper=to_status,
        require_same_user=True,
        on_connection_closed=trimmer.connection_closed,
    )
    server.register(SERVICE, service.handlers())
    return server


async def _serve(flags: Flags, reaper: Reaper) -> None:
    from shim.events import Publisher
    from shim.service import TaskService

    loop = asyncio.get_running_loop()
    ttrpc_address = os.environ.get("TTRPC_ADDRESS", flags.address + ".ttrpc")
    publisher = Publisher(ttrpc_address, flags.namespace)
    service = TaskService(namespace=flags.namespace, reaper=reaper, publisher=publisher)
    stop = service.shutdown_requested
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    socket_file = _socket_file()
    listener = socket.socket(fileno=3)
    # Handed over with dup2, so inheritable: no child (runc, CRIU, helpers) may keep the
    # shim's socket open, or containerd would find it "served" after this shim is gone.
    listener.set_inheritable(False)
    server = _task_server(loop, service)
    serving = loop.create_task(server.serve(listener))
    # debug, not info: a line written to containerd's log FIFO wakes containerd, and on a
    # busy host this one delayed the first accept (the runc shim logs neither)
    log.debug("shim %s serving (namespace %s)", flags.id, flags.namespace)
    await stop.wait()
    log.debug("shim shutting down")
    # No pause for the Shutdown reply: close() ends each connection once its requests are
    # answered (the transport flushes the reply first). containerd waits for the connection
    # to close before it goes on (every `ctr run --rm`, every last delete of a group), so a
    # pause here was that much longer on each: 50 ms were.
    server.close()
    try:
        await asyncio.wait_for(asyncio.shield(server.wait_closed()), _SHUTDOWN_DRAIN)
    except TimeoutError:
        log.warning("requests still in flight at shutdown; cancelling them")
        server.abort()
    serving.cancel()
    await publisher.close(_SHUTDOWN_DRAIN)
    _remove_socket(socket_file)


def _socket_file() -> tuple[str, int] | None:
    """The path of the socket file this shim serves (from the bundle's ``address``) and its
    inode, or None if it cannot be told."""
    try:
        with open("address") as f:  # (not pathlib: a dozen functions run once per daemon)
            path = f.read().strip().removeprefix("unix://")
        return path, os.stat(path).st_ino
    except OSError:
        return None


def _remove_socket(socket_file: tuple[str, int] | None) -> None:
    """Unlink the socket file, unless another shim has put a new one there since."""
    if socket_file is not None:
        unlink_if_ours(*socket_file)


async def _rehearsal(rounds: int) -> tuple[int, int]:
    """One shim's life in miniature, inside this process: the Task service on a ttrpc
    server, a client calling it over a unix socket (Connect, then a Create, State and Delete
    that fail as a bundle or container is missing), events published to a stand-in for
    containerd's events service; everything closed afterwards. Returns how many calls were
    answered and how many events arrived."""
    from google.protobuf.empty_pb2 import Empty
    from google.protobuf.message import Message

    from shim.api.containerd.events import task_pb2 as task_events
    from shim.api.containerd.task.v2 import shim_pb2 as api
    from shim.errors import to_status
    from shim.events import Publisher
    from shim.reaper import Reaper
    from shim.service import SERVICE, TaskService
    from shim.ttrpc import Client, Server, TtrpcError

    loop = asyncio.get_running_loop()
    name = f"\0pyrunc-rehearsal-{os.getpid()}-{time.monotonic_ns()}"
    events_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    task_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    events_listener.bind(name + "-events")
    task_listener.bind(name + "-task")
    events_listener.listen(8)
    task_listener.listen(8)

    forwarded = answered = 0

    async def forward(ctx: object, payload: bytes) -> bytes:
        nonlocal forwarded
        forwarded += 1
        return bytes(Empty().SerializeToString())

    events = Server(error_mapper=to_status, require_same_user=True)
    events.register("containerd.services.events.ttrpc.v1.Events", {"Forward": forward})
    publisher = Publisher(name + "-events", "rehearsal")
    service = TaskService(namespace="rehearsal", reaper=Reaper(), publisher=publisher)
    server = _task_server(loop, service)
    tasks = [
        loop.create_task(events.serve(events_listener)),
        loop.create_task(server.serve(task_listener)),
    ]
    metadata = {"containerd-namespace-ttrpc": "rehearsal"}
    calls: list[tuple[str, Message]] = [
        ("Connect", api.ConnectRequest(id="c")),
        ("Create", api.CreateTaskRequest(id="c", bundle="/nonexistent")),
        ("State", api.StateRequest(id="c")),
        ("Delete", api.DeleteRequest(id="c")),
    ]
    try:
        for i in range(rounds):
            client = await Client.connect(name + "-task")
            try:
                for method, req in calls:
                    # answered with the error a missing bundle or container gets, but Connect
                    with contextlib.suppress(TtrpcError):
                        await client.call(
                            SERVICE, method, req.SerializeToString(), metadata=metadata,
                            timeout=5.0,
                        )
                    answered += 1
            finally:
                await client.close()
            publisher.publish("/tasks/create", task_events.TaskCreate(container_id="c", pid=i))
        await publisher.close(5.0)
    finally:
        for srv in (server, events):
            srv.close()
            srv.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        events_listener.close()
        task_listener.close()
    return answered, forwarded


def rehearse(rounds: int = 12) -> tuple[int, int]:
    """Run :func:`_rehearsal` to the end, before the fork server forks any daemon: the
    interpreter then has quickened the code a daemon runs, computed the hashes and filled
    the caches it needs, and created what asyncio creates once per process, so a daemon
    forked afterwards writes to fewer of the pages it shares with the fork server. Any
    failure is swallowed: the rehearsal only ever saves memory. Returns what
    :func:`_rehearsal` does, ``(0, 0)`` after a failure.

    The root logger's level is set to a daemon's default here, once: setting it in each
    daemon would empty every logger's cache there, a write to each."""
    logging.getLogger().setLevel(logging.INFO)
    try:
        return asyncio.run(_rehearsal(rounds))
    except Exception:
        return 0, 0


def serve(flags: Flags) -> int:
    """Run the daemon until shutdown; returns the process exit code."""
    _setup_logging(flags.debug)

    async def given() -> Flags:
        return flags

    return _run(given, logging_set=True)


def serve_when_told(told: Callable[[], Awaitable[Flags | None]]) -> int:
    """Run a daemon that does not know yet which shim it is: its event loop made and
    running, it awaits ``told`` (a spare of the fork server waits there for a ``start``),
    then serves as those flags say (logging to the ``log`` FIFO of the working directory
    ``told`` left it in); ``None`` from ``told`` ends it at once (exit code 0)."""
    return _run(told, logging_set=False)


def _run(told: Callable[[], Awaitable[Flags | None]], *, logging_set: bool) -> int:
    # SIGPIPE is ignored already: the interpreter ignores it at start-up, and every daemon
    # runs in a process Python started (the fork server, or ``start``). Setting it again
    # ran signal's enum conversions in each daemon.
    _fix_mmap_threshold()
    try:
        _become_subreaper()
        asyncio.run(_when_told(told, logging_set))
    except Exception:
        log.exception("shim failed")
        return 1
    return 0


async def _when_told(told: Callable[[], Awaitable[Flags | None]], logging_set: bool) -> None:
    from shim.reaper import Reaper

    reaper = Reaper()  # before being told: a spare has it installed by then
    reaper.install(asyncio.get_running_loop())
    flags = await told()
    if flags is None:
        return
    if not logging_set:
        _setup_logging(flags.debug)
    await _serve(flags, reaper)
