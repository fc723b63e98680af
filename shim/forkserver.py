"""A warm template process that forks shim daemons, so a new shim starts without importing.

Strategy: the idea of multiprocessing's ``forkserver``. A Python shim daemon needs ~50 ms of
imports (asyncio, protobuf, the Task service) before it can answer containerd's first Create,
and that sits on the critical path of every ``ctr run``. The fork server imports all of it once
and waits on a root-only unix socket; ``start`` binds the shim's socket as before, then hands
it (SCM_RIGHTS) with the shim's flags, working directory and environment to the fork server,
which hands them to its spare - a daemon forked ahead, its event loop already running - or
forks a daemon for them, and answers with its pid; it forks the next spare once it has
answered.

Rules:
* The fork server runs no event loop or thread while it serves (its rehearsal's loop is
  closed before the first request), so forking it is safe; it forks only on requests from
  the same user (SO_PEERCRED). The daemon is its child in a session of its own (as the runc
  shim's daemon is in one of its own); the fork server ignores SIGCHLD, so the kernel reaps
  the daemons that end, and those it leaves behind when it exits go to init. A spare (a
  daemon forked ahead, waiting for the next request with its loop running) is the one
  process it forks outside a request; it ends when the fork server does.
* A request carries a stamp of the code ``start`` runs (interpreter and package directory);
  a fork server that was started from other code, or whose package files changed since it
  began (it watches them from before its imports), refuses it and exits, and ``start``
  starts a fresh fork server and asks that one (or forks the daemon itself).
* A daemon must live where containerd put ``start``: same namespaces (a containerd in its own
  network namespace stands for another host) and same cgroups. The request carries them and
  the fork server serves only callers that share its own; others fork their daemon themselves.
* Anything unexpected makes ``start`` fall back to forking the daemon itself: the fork server
  only ever makes starting faster, never possible or impossible.
The protocol, the checks and the serve loop are :mod:`shim.warm`'s; this module adds what
a shim daemon needs: the listener passed along, and the fork into the daemon. It is an
entry point of its own (``python -m shim.forkserver``) that imports the daemon; ``start``
imports it only for :func:`request_daemon` and :func:`spawn_server`, so no protobuf and no
dataclasses at module level.
"""

from __future__ import annotations

import os
import sys

from shim.warm import RUN_DIR, Request, encode_json, request, serve, sha256_hex, where_am_i

TYPE_CHECKING = False  # (importing typing would cost start-up time; see shim.cli)
if TYPE_CHECKING:
    import _socket
    import socket
    from collections.abc import Callable

    from shim.flags import Flags

__all__ = ["IDLE", "request_daemon", "serve_forever", "socket_path", "spawn_server"]

#: Seconds without a request after which a fork server ends (one serves each place, and
#: places come and go: a test's containerd, a containerd restarted into another cgroup).
IDLE = 1800.0
# The daemon rewrites its command line in place (shim.proctitle); reserve room for it.
_CMDLINE_ROOM = "-" * 1024


def request_daemon(listener: _socket.socket, argv: list[str]) -> int:
    """Ask the fork server for a daemon serving ``listener`` that runs as ``argv`` (the
    daemon's flags; see :func:`shim.flags.parse_flags`) in this directory and environment.

    Returns:
        The daemon's pid.
    Raises:
        shim.warm.Unavailable: no fork server, a stale or broken one; the caller forks the
            daemon itself (and starts a new server if ``restart``).
    """
    fields: dict[str, object] = {"cwd": os.getcwd(), "env": dict(os.environ), "argv": argv}
    place = where_am_i()
    return request(
        socket_path(place), fields, what="fork server", fds=[listener.fileno()], place=place
    )


def socket_path(place: dict[str, str] | None = None) -> str:
    """The socket of the fork server for this place: one server per set of namespaces and
    cgroups (a daemon must live where containerd put ``start``), named by a hash of them, so
    a containerd in another cgroup (a test's, a second daemon's) gets a warm server of its
    own instead of "elsewhere" answers from whichever server took a shared path first."""
    here = encode_json(where_am_i() if place is None else place).encode()
    return f"{RUN_DIR}/forkserver-{sha256_hex(here)[:16]}.sock"


def spawn_server() -> None:
    """Start a fork server in the background, detached from the caller's stdio and session
    (best effort: if two ``start`` race, the second one's server finds the socket taken)."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the intermediate child exits at once
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        os.chdir("/")
        os.execv(sys.executable, [sys.executable, "-m", "shim.forkserver", _CMDLINE_ROOM])
    finally:
        os._exit(1)


MADV_MERGEABLE = 12


def offer_to_ksm(maps: str = "/proc/self/maps") -> int:
    """Mark this process's writable private mappings mergeable (``MADV_MERGEABLE``); returns
    how many bytes were marked (0 where the kernel has no KSM).

    Every daemon inherits these mappings and, running the same code, copies the same pages
    with the same contents: measured with hack/shim_pages.py, of a daemon's ~5.8 MiB of
    private memory 1.5 MiB is identical to the fork server's pages (references counted up
    and back down) and 3 MiB identical in every daemon. With KSM running on the host
    (``/sys/kernel/mm/ksm/run`` = 1; the shim never turns it on) those pages are merged
    back into one copy. Only the fork server's own mappings are offered, so only pages a
    daemon copied from it: not the daemon's new memory, and never a container's (the flag
    is per mapping and goes with ``execve``).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    marked = 0
    with open(maps) as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        perms = fields[1]
        if "w" not in perms or "p" not in perms:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_MERGEABLE) == 0:
            marked += end - start
    return marked


def _libc_fork() -> Callable[[], int]:
    """fork(2) as the C library does it, without Python's at-fork handlers.

    ``os.fork`` runs the handlers that ``threading`` and ``logging`` register (new locks,
    walks over threads and handlers) in the parent and in the child: Python code touching
    objects all over the heap the two share, and every page so touched is copied. Measured
    on a fork of the daemon's imports: a child's private memory 768 KiB with ``os.fork``,
    172 KiB without. What those handlers repair - locks held by other threads at the fork -
    cannot happen in the fork server, which has one thread and holds no lock while it forks
    (the GIL stays held across the call: ``PyDLL``); the child's main thread keeps its
    identity (pthread_self is the same), so ``threading`` stays consistent.
    """
    import ctypes

    fork = ctypes.PyDLL(None, use_errno=True).fork
    fork.argtypes = ()
    fork.restype = ctypes.c_int

    def raw_fork() -> int:
        pid = int(fork())
        if pid < 0:
            raise OSError(ctypes.get_errno(), "fork")
        if pid == 0 and "random" in sys.modules:  # the one handler whose work still matters
            sys.modules["random"].seed()
        return pid

    return raw_fork


#: How the fork server forks: :func:`_libc_fork` once it serves (see there); ``os.fork``
#: in any other process.
_fork: Callable[[], int] = os.fork


def _fork_daemon(req: Request) -> int:
    """A daemon for one request: the spare's pid once the request is handed over to it
    (:class:`_Spare`), else that of a daemon forked for it now (the child never returns).

    One fork, not two: the daemon stays the fork server's child (its own session, as the
    runc shim's daemon has), and the fork server ignores SIGCHLD (:func:`serve_forever`), so
    the kernel reaps a daemon that ends. A double fork, whose middle process forks the whole
    fork server once more and exits, took 2.5-3 ms of every ``start`` against 0.5 ms."""
    import signal  # (loaded in the fork server already; ``start`` imports this module)

    global _spare
    spare, _spare = _spare, None
    if spare is not None:
        pid = spare.hand_over(req)
        if pid:
            return pid
    pid = _fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the daemon reaps its own children
            os.setsid()  # its own session and process group, like the runc shim's daemon
            _become_daemon(req)
        finally:
            os._exit(1)
    return pid


class _Spare:
    """A daemon forked ahead of the next request, waiting for it on a socket pair with its
    event loop made and running (:func:`shim.daemon.serve_when_told`): what a daemon does
    between the fork and accepting containerd's first connection (3.5-11 ms: the loop, its
    epoll and self-pipe, the pages it copies on the way) is then off ``start``'s path, and so
    is the fork. One at a time; the fork server makes the next after it has answered. A
    spare whose fork server is gone reads end-of-file and exits."""

    __slots__ = ("pid", "sock")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def hand_over(self, req: Request) -> int:
        """Send ``req`` (its working directory, environment, argv and file descriptors) to
        the spare; its pid, or 0 if it is gone (the caller forks a daemon instead)."""
        import marshal
        import socket

        # marshal: C code only, in the spare too (its pages are then not copied for it);
        # safe between this process and its own fork, on a socket pair nobody else holds
        message = marshal.dumps({key: req.fields.get(key) for key in ("cwd", "env", "argv")})
        rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in req.fds)
        try:  # one record (SOCK_SEQPACKET): all of it, or nothing
            self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        except OSError:
            return 0
        finally:
            self.sock.close()  # end-of-file: the spare has all, or ends if it had nothing
        return self.pid


#: The spare daemon waiting for the next request, if any (the fork server's only).
_spare: _Spare | None = None


def _make_spare() -> None:
    """Fork the next :class:`_Spare` if there is none (after an answer, off its path)."""
    global _spare
    import signal
    import socket

    if _spare is not None:
        return
    try:
        mine, its = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return
    try:
        pid = _fork()
    except OSError:
        mine.close()
        its.close()
        return
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            # Its end of the pair holds fd 3 until the request comes, so that the event loop's
            # descriptors (epoll, self-pipe), made meanwhile, are not on 3, where the shim's
            # socket goes (_take_request); the rest are the fork server's (its sockets, its
            # watch): none is the spare's.
            fd = its.detach()
            os.dup2(fd, 3, inheritable=False)
            os.closerange(4, os.sysconf("SC_OPEN_MAX"))
            from shim.proctitle import set_cmdline

            set_cmdline(["containerd-shim-pyrunc-v2", "spare"])
            code = _serve_as_spare(socket.socket(fileno=3))
        finally:
            os._exit(code)
    its.close()
    _spare = _Spare(pid, mine)


def _serve_as_spare(sock: socket.socket) -> int:
    """In the spare: make the event loop, wait on ``sock`` for the request (one record, see
    :meth:`_Spare.hand_over`), become the daemon it asks for (:func:`_take_request`) and
    serve; 0 at once on end-of-file. It runs as little Python of its own as it can: every
    function that runs here only for this copies pages for this spare."""
    import asyncio
    import marshal
    import socket

    from shim.daemon import serve_when_told
    from shim.warm import _MAX_REQUEST

    sock.setblocking(False)

    async def told() -> Flags | None:
        loop = asyncio.get_running_loop()
        while True:
            readable: asyncio.Future[None] = loop.create_future()

            def ready(fut: asyncio.Future[None] = readable) -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(sock.fileno(), ready)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(4))
                break
            except BlockingIOError:
                continue
        sock.close()  # fd 3 is free for the shim's socket
        fds = [int.from_bytes(cdata[i:i + 4], sys.byteorder, signed=True)
               for level, kind, cdata in ancdata
               if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for i in range(0, len(cdata) - 3, 4)]
        if not data or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None  # the fork server is gone (or sent nonsense): nothing to serve
        return _take_request(Request(marshal.loads(data), fds, ()))

    return serve_when_told(told)


#: The fork server's own environment, as it was when it began to serve (it never changes it).
_SERVER_ENV: dict[str, str] = {}


def set_environ(env: dict[str, str], current: dict[str, str]) -> None:
    """Make ``os.environ`` ``env``, given that it is ``current`` now, by changing only the
    variables that differ. The caller's environment is containerd's, as the fork server's
    mostly is (containerd's per-shim variables aside): clearing and refilling
    ``os.environ`` ran its Python-level mapping code over every variable and copied ~400
    KiB of the fork server's pages into every daemon."""
    for key in current.keys() - env.keys():
        del os.environ[key]
    for key, value in env.items():
        if current.get(key) != value:
            os.environ[key] = value


def _become_daemon(req: Request) -> None:
    from shim.daemon import serve as serve_daemon

    os._exit(serve_daemon(_take_request(req)))


def _take_request(req: Request) -> Flags:
    """Become the daemon ``req`` asks for: its working directory and environment, stdio on
    /dev/null, the shim's socket as fd 3, its command line; returns its flags."""
    from shim.flags import parse_flags
    from shim.proctitle import set_cmdline

    req.close_sockets()
    fd = req.fds[0]
    os.chdir(str(req.fields["cwd"]))
    env = req.fields["env"]
    assert isinstance(env, dict)
    set_environ({str(k): str(v) for k, v in env.items()}, _SERVER_ENV)
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    argv = req.fields["argv"]
    assert isinstance(argv, list)
    set_cmdline([str(a) for a in argv])
    return parse_flags([str(a) for a in argv[1:]])


def serve_forever() -> None:
    """The fork server: import what a daemon needs, then serve requests until a stale one
    comes or :data:`IDLE` seconds pass without one."""
    global _fork
    import signal

    from shim.warm import CodeWatch

    watch = CodeWatch.start()  # before the imports: a file changed meanwhile makes it stale
    # The point of the fork server: import everything a daemon needs, once. A module a
    # daemon imported itself would cost it ~700 KiB of private memory: the import system
    # touches objects all over the shared heap (measured with hack/shim_pages.py).
    # And what a daemon imports only when it is asked to checkpoint, restore or report stats:
    # here it costs the server ~1.1 MiB once, shared; in each daemon that needed it, 17-19 ms
    # of CPU and ~4.9 MiB of private memory (the import system's touches included).
    from google.protobuf.timestamp_pb2 import Timestamp  # noqa: F401

    import shim.api.containerd.types.mount_pb2
    import shim.api.pyrunc.v1.checkpoint_pb2
    import shim.checkpoint.netrestore
    import shim.checkpoint.plan
    import shim.checkpoint.runner
    import shim.daemon
    import shim.flags
    import shim.metrics
    import shim.mount
    import shim.service
    from shim.proctitle import set_cmdline

    shim.mount._lib()  # its handle on the C library, made here once, not in each Create

    # SIGINT at its default, as the daemons inherit it: with Python's own handler there,
    # asyncio.run puts one of its own in its place, and the daemon's add_signal_handler for
    # SIGINT then replaces that one, and signal.signal, turning the old handler into an enum,
    # fails and formats the repr of asyncio.run's main task for the error it swallows (a
    # dozen functions, on every daemon's start)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    shim.daemon.rehearse()
    # Daemons are this process's children (see _fork_daemon): ignoring SIGCHLD makes the
    # kernel reap each one that ends, without a wait in the serve loop.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    _fork = _libc_fork()
    _SERVER_ENV.update(os.environ)

    def ready() -> None:
        set_cmdline(["containerd-shim-pyrunc-v2", "forkserver"])
        offer_to_ksm()
        _make_spare()

    try:
        serve(socket_path(), _fork_daemon, fds=1, idle=IDLE, ready=ready, watch=watch,
              after=_make_spare)
    finally:
        if _spare is not None:
            _spare.sock.close()  # it reads end-of-file and ends


if __name__ == "__main__":
    serve_forever()
