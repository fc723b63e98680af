"""Entry points around the network snapshot: ``serve`` (started by the shim at restore) and
``hook`` (run by runc at CRIU's ``setup-namespaces`` step). (The snapshot itself is taken in
the shim, over rtnetlink without pyroute2: :func:`shim.checkpoint.network.take_snapshot`.)

Strategy: importing pyroute2 takes ~100 ms, more than the whole time budget of the restore
hook. So the shim starts ``serve`` when a restore begins: it imports pyroute2, loads and checks
the snapshot, and listens on a unix socket while runc and CRIU do the early restore work. The
hook runc runs is tiny: it forwards the OCI state (the restored init's pid) to that socket and
exits with the rebuild's result, so a failure fails the restore (runc reports the hook's
stderr). ``serve`` handles one rebuild and exits (or none, after :data:`SERVICE_DEADLINE`).
The hook runs as a plain script without the site machinery (``python -I -S
.../shim/nethook.py hook SOCKET``): it needs only the standard library, and this module
imports the package lazily for the other commands.

Even started at Create, ``serve`` needs ~130 ms (mostly pyroute2's imports) and a hook
that comes sooner waits. So a **template** (``python -m shim.nethook template``) keeps
pyroute2 imported and forks a ready ``serve`` per request on the socket it is given, like
the shim's fork server (:mod:`shim.warm`'s protocol and rules: it serves only callers in its
own namespaces and cgroups, since the rebuild's host side runs where it runs). It exits after
:data:`TEMPLATE_IDLE` seconds without a request. This module imports nothing of the package
at module level (the hook runs it as a plain script), so paths come in as arguments. Usage:

    python -m shim.nethook serve SOCKET SNAPSHOT.json
    python -m shim.nethook template SOCKET
    python -I -S /path/to/shim/nethook.py hook SOCKET      (OCI state on stdin)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

__all__ = [
    "SERVICE_DEADLINE",
    "STOP",
    "TEMPLATE_IDLE",
    "hook",
    "hook_argv",
    "lo_up",
    "lo_up_argv",
    "loopback_up",
    "main",
    "serve",
    "staging_path",
    "template",
    "template_argv",
]

_HOOK_CONNECT_TIMEOUT = 10.0  # serve may still be importing pyroute2 when the hook runs
TEMPLATE_IDLE = 600.0  # seconds: a burst of restores keeps it; an idle host gets its memory back
SERVICE_DEADLINE = 600.0
"""Seconds a rebuild service waits for its hook (or :data:`STOP`): then it removes its socket
and ends. Nothing else ends one whose shim died between Create and Start; a Start that comes
later finds it gone and has the shim start another
(:class:`shim.checkpoint.netrestore.NetworkRestore`)."""
_TEMPLATE_ROOM = "-" * 256  # command-line room for the template's title (shim.proctitle)


def template_argv(socket_path: str) -> list[str]:
    """The command that starts a template serving on ``socket_path``."""
    return [sys.executable, "-m", "shim.nethook", "template", socket_path, _TEMPLATE_ROOM]


def template(socket_path: str) -> None:
    """Keep pyroute2 imported; fork a ready :func:`serve` for each request, answer its pid.

    A request carries ``{"socket", "snapshot"}`` (:mod:`shim.warm`'s protocol: stamp and
    place checked there). A stale template (other code) answers and exits. The forked
    services are reaped by the kernel (SIGCHLD ignored), each lives for one hook (or
    :data:`SERVICE_DEADLINE` without one).
    """
    import signal

    from pyroute2 import IPRoute  # noqa: F401  (the point: imported once, forked warm)

    import shim.checkpoint.network  # noqa: F401
    from shim.proctitle import set_cmdline
    from shim.warm import Request
    from shim.warm import serve as serve_requests

    def fork_service(req: Request) -> int:
        socket_path, snapshot_path = str(req.fields["socket"]), str(req.fields["snapshot"])
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                req.close_sockets()
                os.setsid()
                set_cmdline(["containerd-shim-pyrunc-v2", "nethook-serve"])
                serve(socket_path, snapshot_path)
                code = 0
            finally:
                os._exit(code)
        return pid

    os.chdir("/")  # not the bundle of the shim that started it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    title = ["containerd-shim-pyrunc-v2", "nethook-template"]
    serve_requests(
        socket_path, fork_service, idle=TEMPLATE_IDLE, ready=lambda: set_cmdline(title)
    )


def hook_argv(socket_path: str) -> list[str]:
    """The OCI hook command that forwards to ``serve`` on ``socket_path``."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), "hook", socket_path]


def serve(socket_path: str, snapshot_path: str, *, deadline: float = SERVICE_DEADLINE) -> None:
    """Load the snapshot, listen, rebuild for the one hook that comes, answer it (or end
    on :data:`STOP`; connections that bring no request are not the hook's and are dropped).
    With no request within ``deadline`` seconds it removes its socket and ends.

    A snapshot that cannot be read or parsed is no reason to stay silent: the service listens
    anyway and gives the hook that error, so the restore fails at once and says why (instead
    of the hook waiting for a socket that never appears)."""
    import contextlib

    from pyroute2 import IPRoute  # noqa: F401  (the point: ~100 ms of imports, done now)

    from shim.checkpoint.network import NetworkSnapshot, load_snapshot, probe_from_host, rebuild
    from shim.errors import ShimError

    snap: NetworkSnapshot | Exception
    try:
        with open(snapshot_path, "rb") as f:
            snap = load_snapshot(f.read())
    except (OSError, ShimError) as exc:
        snap = exc
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = staging_path(socket_path)
    listener.bind(tmp)
    listener.listen(8)
    os.rename(tmp, socket_path)  # appears only once everything is imported and loaded
    until = time.monotonic() + deadline
    ours = os.stat(socket_path).st_ino
    # Duplicate address detection while CRIU is still busy (a hook that comes meanwhile
    # waits in the backlog for what is left of it), so the rebuild does not wait for answers.
    probed: frozenset[str] = frozenset()
    early = contextlib.ExitStack()
    if isinstance(snap, NetworkSnapshot):
        try:
            probed = probe_from_host(snap, early)
        except (OSError, ShimError) as exc:
            snap = exc
    accepted = _accept_request(listener, until)
    if accepted is None:  # no hook came: the shim is gone, or long past its Create
        with early, listener, contextlib.suppress(FileNotFoundError):
            if os.stat(socket_path).st_ino == ours:
                os.unlink(socket_path)
        return
    conn, request = accepted
    # what the rebuild leaves to close (ARP probe sockets) waits until the hook has its answer
    with early, contextlib.ExitStack() as late, conn, listener:
        if request == STOP:
            return
        try:
            state = json.loads(request)
            pid = state.get("pid") if isinstance(state, dict) else None
            if type(pid) is not int or pid <= 0:
                raise ValueError("the OCI state runc gave the hook names no pid")
            if isinstance(snap, Exception):
                raise snap
            rebuild(snap, pid, release=late, probed=probed)
            conn.sendall(b"ok")
        except Exception as exc:
            conn.sendall(f"rebuilding the network failed: {exc}".encode())


def staging_path(socket_path: str) -> str:
    """Where :func:`serve` binds its socket before it moves it to ``socket_path``."""
    return f"{socket_path}.tmp"


STOP = b"stop"
"""What the shim sends a rebuild service that is no longer needed (no hook will come)."""
_REQUEST_TIMEOUT = 10.0  # the hook sends the state it read before it connected, at once


def _accept_request(
    listener: socket.socket, until: float
) -> tuple[socket.socket, bytes] | None:
    """The next connection that brings a request (the hook's state, or :data:`STOP`) and
    the request; None if none came by ``until`` (:func:`time.monotonic`). A connection
    that closes without a word, or says nothing for
    :data:`_REQUEST_TIMEOUT` seconds, is someone else's: e.g. :func:`shim.warm.sweep`, which
    connects to every socket in the run directory to see whether a server still lives there
    (measured: the service took such a probe for its one hook, answered it and ended, and the
    restore's real hook found no service: "did not come up")."""
    while (left := until - time.monotonic()) > 0:
        listener.settimeout(left)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return None
        try:
            conn.settimeout(_REQUEST_TIMEOUT)
            request = _read_all(conn)
            conn.settimeout(None)
        except OSError:
            request = b""
        if request:
            return conn, request
        conn.close()
    return None


def loopback_up(netns: str) -> None:
    """Bring ``lo`` up in the network namespace at ``netns`` (a ``/proc/<pid>/ns/net``
    path), with the standard library only: setns into it and SIOCSIFFLAGS, the same ioctl
    ``ip link set lo up`` makes. The calling thread stays in that namespace: the hook's
    process exits after it, the shim calls it on a thread of its own that ends after it.

    Raises:
        OSError: the namespace cannot be entered or the ioctl failed.
    """
    import ctypes
    import fcntl
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def lo_up() -> int:
    """The hook for a namespace that had nothing but ``lo``: bring it up in the restored
    init's namespace (:func:`loopback_up`; no service, no pyroute2)."""
    state = json.loads(sys.stdin.buffer.read())
    loopback_up(f"/proc/{int(state['pid'])}/ns/net")
    return 0


def lo_up_argv() -> list[str]:
    """The OCI hook command for a loopback-only namespace."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), "lo-up"]


def hook(socket_path: str) -> int:
    state = sys.stdin.buffer.read()
    deadline = time.monotonic() + _HOOK_CONNECT_TIMEOUT
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            conn.connect(socket_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):  # not up yet: what
            # shim.warm.socket_is_live calls dead (this script runs without the package)
            if time.monotonic() > deadline:
                sys.stderr.write(f"network rebuild service {socket_path} did not come up\n")
                return 1
            time.sleep(0.002)
    with conn:
        try:
            conn.sendall(state)
            conn.shutdown(socket.SHUT_WR)
            answer = _read_all(conn).decode(errors="replace")
        except OSError as exc:  # the service died mid-way: say so, no traceback
            answer = f"network rebuild service failed: {exc}"
    if answer != "ok":
        sys.stderr.write((answer or "network rebuild service gave no answer") + "\n")
        return 1
    return 0


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        serve(argv[1], argv[2])
        return 0
    if len(argv) == 2 and argv[0] == "hook":
        return hook(argv[1])
    if argv == ["lo-up"]:
        return lo_up()
    if len(argv) in (2, 3) and argv[0] == "template":  # (a third only reserves room)
        template(argv[1])
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
