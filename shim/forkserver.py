"""A warm template process that forks shim daemons, so a new shim starts without importing.

Strategy: the idea of multiprocessing's ``forkserver``. A Python shim daemon needs ~50 ms of
imports (asyncio, protobuf, the Task service) before it can answer containerd's first Create,
and that sits on the critical path of every ``ctr run``. The fork server imports all of it once
and waits on a root-only unix socket; ``start`` binds the shim's socket as before, then hands
it (SCM_RIGHTS) with the shim's flags, working directory and environment to the fork server,
which double-forks a daemon that is ready at once and answers with its pid.

Rules:
* The fork server never runs an event loop or a thread, so forking it is safe; it forks only
  on requests from the same user (SO_PEERCRED), and the daemon is a grandchild reparented
  away from it (as the runc shim's daemon is reparented away from ``start``).
* A request carries a stamp of the code ``start`` runs (interpreter, package files and their
  mtimes); a fork server that was started from other code refuses it and exits, and ``start``
  falls back to forking the daemon itself and starts a fresh fork server in the background.
* A daemon must live where containerd put ``start``: same namespaces (a containerd in its own
  network namespace stands for another host) and same cgroups. The request carries them and
  the fork server serves only callers that share its own; others fork their daemon themselves.
* Anything unexpected makes ``start`` fall back to forking the daemon itself: the fork server
  only ever makes starting faster, never possible or impossible.
No protobuf and no dataclasses here: ``start`` imports this module.
"""

from __future__ import annotations

import json
import os
import socket
import sys

__all__ = [
    "SOCKET_PATH",
    "Unavailable",
    "bind_unique",
    "code_stamp",
    "request_daemon",
    "serve_forever",
    "spawn_server",
    "unlink_if_ours",
    "where_am_i",
]

SOCKET_DIR = "/run/containerd-shim-pyrunc"
SOCKET_PATH = f"{SOCKET_DIR}/forkserver.sock"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MAX_REQUEST = 1 << 20
_TIMEOUT = 5.0
# The daemon rewrites its command line in place (shim.proctitle); reserve room for it.
_CMDLINE_ROOM = "-" * 1024


class Unavailable(Exception):
    """No daemon from the fork server; ``restart`` says whether a new server should start."""

    def __init__(self, reason: str, *, restart: bool) -> None:
        super().__init__(reason)
        self.restart = restart


def code_stamp(root: str = PACKAGE_DIR) -> str:
    """What identifies the code this process runs: the interpreter and the files of the
    package (path, mtime and size of every ``.py`` under ``root``)."""
    import hashlib

    digest = hashlib.sha256(f"{sys.executable}\0{root}".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                digest.update(f"\0{path}:{st.st_mtime_ns}:{st.st_size}".encode())
    return digest.hexdigest()


_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def where_am_i() -> dict[str, str]:
    """This process's namespaces and cgroups: what a forked daemon would inherit."""
    place: dict[str, str] = {}
    for ns in _NAMESPACES:
        try:
            place[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            place[ns] = ""
    with open("/proc/self/cgroup") as f:
        place["cgroups"] = f.read()
    return place


def request_daemon(listener: socket.socket, argv: list[str]) -> int:
    """Ask the fork server for a daemon serving ``listener`` that runs as ``argv`` (the
    daemon's flags; see :func:`shim.cli.parse_flags`) in this directory and environment.

    Returns:
        The daemon's pid.
    Raises:
        Unavailable: no fork server, a stale or broken one; the caller forks the daemon
            itself (and starts a new server if ``restart``).
    """
    request = json.dumps(
        {
            "stamp": code_stamp(),
            "place": where_am_i(),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "argv": argv,
        }
    ).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TIMEOUT)
            try:
                conn.connect(SOCKET_PATH)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise Unavailable(f"no fork server: {exc}", restart=True) from exc
            socket.send_fds(conn, [request], [listener.fileno()])
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        answer = json.loads(reply or b"{}")
    except (OSError, ValueError) as exc:
        raise Unavailable(f"fork server failed: {exc}", restart=False) from exc
    pid = answer.get("pid") if isinstance(answer, dict) else None
    if isinstance(pid, int) and pid > 0:
        return pid
    error = answer.get("error") if isinstance(answer, dict) else answer
    raise Unavailable(f"fork server answered {error!r}", restart=error == "stale")


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


def bind_unique(path: str) -> tuple[socket.socket, int] | None:
    """Listen on ``path`` (mode 0600, in a 0700 directory); return the socket and the inode
    of its file, or None if another server already serves there."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        sock.close()
        return None  # another server is serving
    except OSError:
        if os.path.exists(path):
            os.unlink(path)
    finally:
        probe.close()
    tmp = f"{path}.{os.getpid()}"
    sock.bind(tmp)
    os.chmod(tmp, 0o600)
    sock.listen(64)
    inode = os.stat(tmp).st_ino
    os.rename(tmp, path)
    return sock, inode


def _fork_daemon(conn: socket.socket, request: dict[str, object], fd: int) -> None:
    """Double-fork a daemon for one request; the grandchild never returns."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setsid()  # its own session and process group, like the runc shim's daemon
            daemon = os.fork()
            if daemon:
                os.write(write_end, str(daemon).encode())
                os._exit(0)
            os.close(write_end)
            _become_daemon(request, fd, conn)
        finally:
            os._exit(1)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as f:
        pid = f.read().decode() or "0"
    conn.sendall(json.dumps({"pid": int(pid)}).encode())


def _become_daemon(request: dict[str, object], fd: int, conn: socket.socket) -> None:
    from shim.cli import parse_flags
    from shim.daemon import serve
    from shim.proctitle import set_cmdline

    conn.close()
    os.chdir(str(request["cwd"]))
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    argv = request["argv"]
    assert isinstance(argv, list)
    set_cmdline([str(a) for a in argv])
    os._exit(serve(parse_flags([str(a) for a in argv[1:]])))


def serve_forever() -> None:
    """The fork server's loop: one request at a time, each a fork and a short reply."""
    # The point of the fork server: import everything a daemon needs, once.
    import shim.daemon
    import shim.service  # noqa: F401
    from shim.proctitle import set_cmdline

    set_cmdline(["containerd-shim-pyrunc-v2", "forkserver"])
    stamp = code_stamp()
    place = where_am_i()
    bound = bind_unique(SOCKET_PATH)
    if bound is None:
        return
    sock, inode = bound
    my_uid = os.geteuid()
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(_TIMEOUT)
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                uid = int.from_bytes(creds[4:8], sys.byteorder)
                data, fds, _flags, _addr = socket.recv_fds(conn, _MAX_REQUEST, 1)
                while chunk := conn.recv(65536):
                    data += chunk
                request = json.loads(data)
            except (OSError, ValueError):
                continue
            try:
                if uid != my_uid or len(fds) != 1 or not isinstance(request, dict):
                    conn.sendall(b'{"error": "refused"}')
                    continue
                if request.get("stamp") != stamp:
                    conn.sendall(b'{"error": "stale"}')
                    sock.close()
                    unlink_if_ours(SOCKET_PATH, inode)
                    return
                if request.get("place") != place:
                    conn.sendall(b'{"error": "elsewhere"}')  # other namespaces or cgroups
                    continue
                _fork_daemon(conn, request, fds[0])
            except (OSError, KeyError, ValueError):
                continue
            finally:
                for fd in fds:
                    os.close(fd)


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file ``path`` unless a newer server has already replaced it."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    serve_forever()
