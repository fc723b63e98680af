"""``containerd-shim-pyrunc-v2``: the binary containerd runs — ``start``, ``delete``, ``-v``,
and, with no action, the daemon.

Strategy: mirrors containerd ``runtime/v2/shim/shim.go`` and the runc shim's manager. Flags
follow Go's ``flag`` syntax (:mod:`shim.flags`). ``start`` stays lean: it imports neither
asyncio nor protobuf (unless options arrive on stdin); the daemon is a fork of it, so the
interpreter starts once. ``delete`` must print only a serialized DeleteResponse. An entry
point: nothing in the package imports this module.
"""

from __future__ import annotations

import os
import sys

from shim import __version__
from shim.flags import Flags, UsageError, parse_flags

# Imported lazily where needed: ``start`` and ``delete`` run on every container's critical
# path. (A local constant: importing typing for TYPE_CHECKING would cost more than it saves.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from typing import NoReturn

__all__ = ["main", "socket_address"]

RUNTIME = "io.containerd.pyrunc.v2"
SOCKET_DIR = "/run/containerd/s"
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
_SERVER_WAIT = 3.0  # seconds a start waits for a fork server it started to listen


def socket_address(containerd_address: str, namespace: str, group: str) -> str:
    """The shim's socket address: ``unix://`` + a hash of the containerd address, namespace and
    group, exactly as the runc shim derives it (so one group maps to one socket)."""
    from shim.warm import sha256_hex

    key = os.path.join(containerd_address, namespace, group).encode()
    return f"unix://{SOCKET_DIR}/{sha256_hex(key)}"


def _group(bundle: str, cid: str) -> str:
    """The grouping key: a group annotation of the spec, else the container id."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            raw = f.read()
    except OSError:
        return cid
    if not any(key.encode() in raw for key in GROUP_ANNOTATIONS):
        return cid  # no need to parse on the common path
    from shim.warm import decode_json

    try:
        spec = decode_json(raw)
    except ValueError:
        return cid
    annotations = (spec.get("annotations") if isinstance(spec, dict) else None) or {}
    for key in GROUP_ANNOTATIONS:
        if annotations.get(key):
            return str(annotations[key])
    return cid


def _write_address(address: str) -> None:
    with open(".address", "w") as f:
        f.write(address)  # no trailing newline: containerd reads it raw
    os.rename(".address", "address")


def start(flags: Flags) -> int:
    """``start``: bind the socket, get a daemon to serve it, print the address.

    The daemon comes from the fork server (:mod:`shim.forkserver`), which has everything
    imported already; without one (or with a stale one) this process starts one and waits
    for it, and only if that fails forks the daemon itself. With ``PYRUNC_FORKSERVER=0`` in
    containerd's environment, or when containerd runs in other namespaces than the host's,
    the fork server is not used at all.
    """
    from shim.warm import Unavailable, bind_unique, in_host_namespaces  # start only

    bundle = os.getcwd()
    address = socket_address(flags.address, flags.namespace, _group(bundle, flags.id))
    path = address.removeprefix("unix://")
    bound = bind_unique(path, backlog=128)
    if bound is None:  # a shim of this group is already running
        _write_address(address)
        print(address, end="")
        return 0
    listener = bound[0]
    _write_address(address)
    options = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    argv = _daemon_argv(flags)
    if os.environ.get("PYRUNC_FORKSERVER", "1") == "0" or not in_host_namespaces():
        pid = _fork_daemon(listener, argv)
    else:
        from shim import forkserver

        try:
            pid = forkserver.request_daemon(listener, argv)
        except Unavailable as exc:
            pid = _daemon_from_new_server(listener, argv) if exc.restart else 0
            if not pid:
                pid = _fork_daemon(listener, argv)
    listener.close()
    _adjust_daemon(pid, options)
    print(address, end="")
    return 0


def _daemon_from_new_server(listener: _socket.socket, argv: list[str]) -> int:
    """Start a fork server (there was none here, or a stale one) and ask it for the daemon
    once it listens; 0 if that fails. A daemon forked by ``start`` itself imports everything
    on its own and keeps ~16 MiB private for its whole life, against ~6 MiB for one from the
    fork server: worth the server's start-up (~0.1-0.3 s), once per place."""
    import time

    from shim import forkserver
    from shim.warm import Unavailable

    path = forkserver.socket_path()
    try:
        dead = os.stat(path).st_ino  # a dead server's file: wait for the new one's
    except FileNotFoundError:
        dead = 0
    forkserver.spawn_server()
    deadline = time.monotonic() + _SERVER_WAIT
    while not _new_file(path, dead):
        if time.monotonic() > deadline:
            return 0
        time.sleep(0.005)
    try:
        return forkserver.request_daemon(listener, argv)
    except Unavailable:
        return 0


def _new_file(path: str, dead: int) -> bool:
    try:
        return os.stat(path).st_ino != dead
    except FileNotFoundError:
        return False


def _daemon_argv(flags: Flags) -> list[str]:
    """The daemon's command line, as the runc shim re-execs itself (no action)."""
    argv = [
        sys.argv[0],
        "-namespace",
        flags.namespace,
        "-id",
        flags.id,
        "-address",
        flags.address,
        "-publish-binary",
        flags.publish_binary,
    ]
    return [*argv, "-debug"] if flags.debug else argv


def _fork_daemon(listener: _socket.socket, argv: list[str]) -> int:
    """Fork the daemon from this process: stdio to /dev/null, the socket as fd 3, its own
    process group; it shows ``argv`` as its command line."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        if listener.fileno() != 3:
            os.dup2(listener.fileno(), 3)
            listener.close()
        from shim.daemon import serve
        from shim.proctitle import set_cmdline

        set_cmdline(argv)
        code = serve(parse_flags(argv[1:]))
    finally:
        os._exit(code)


def _adjust_daemon(pid: int, options: bytes) -> None:
    """Put the daemon into the shim cgroup the task options ask for (``shim_cgroup`` of
    either runc options type, :mod:`shim.taskoptions`) and give it containerd's OOM score + 1."""
    try:
        with open(f"/proc/{os.getppid()}/oom_score_adj") as f:
            score = int(f.read())
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(min(score + 1, 1000)))
    except (OSError, ValueError):
        pass  # best effort, as in the runc shim
    if not options:
        return
    from shim.taskoptions import decode_bytes  # protobuf: only when options were sent

    shim_cgroup = decode_bytes(options).shim_cgroup
    if shim_cgroup:
        for controller in os.listdir("/sys/fs/cgroup"):
            procs = os.path.join("/sys/fs/cgroup", controller, shim_cgroup.lstrip("/"))
            try:
                with open(os.path.join(procs, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass  # a controller without that cgroup


def delete(flags: Flags) -> int:
    """``delete``: clean up after a dead (or finished) shim; print a DeleteResponse."""
    from shim.cleanup import cleanup

    sys.stdout.buffer.write(cleanup(flags.bundle or os.getcwd(), flags.namespace, flags.id))
    sys.stdout.flush()
    return 0


def _exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once stdout and stderr are flushed, without the interpreter's
    teardown (module and object clean-up: ~0.5-1 ms of every ``start`` and ``delete``, which
    leave nothing to clean: their files and sockets are closed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    try:
        flags = parse_flags(sys.argv[1:])
    except UsageError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if flags.version:
        print(f"{os.path.basename(sys.argv[0])}:\n  Version:  {__version__}\n"
              f"  Runtime:  {RUNTIME}\n  Python version: {sys.version.split()[0]}")
        sys.exit(0)
    if not flags.namespace:
        print("shim namespace cannot be empty", file=sys.stderr)
        sys.exit(1)
    if flags.action == "start":
        _exit_now(start(flags))
    if flags.action == "delete":
        _exit_now(delete(flags))
    if flags.action:
        print(f"unknown action {flags.action!r}", file=sys.stderr)
        sys.exit(2)
    from shim.daemon import serve

    sys.exit(serve(flags))
