"""The ground floor for warm processes and host identity: where this process lives, what code
it runs, and the one request/answer protocol of the processes that fork ready workers.

Strategy: the idea of multiprocessing's ``forkserver``, written once. A warm process (the
shim's fork server, :mod:`shim.forkserver`; the network rebuild template,
:mod:`shim.nethook`) imports the expensive modules once, listens on a root-only unix socket
under :data:`RUN_DIR` and forks a ready worker per request. The caller sends one JSON object -
its code stamp, its place (namespaces and cgroups) and what the handler needs - optionally with
file descriptors (SCM_RIGHTS), then EOF; the answer is ``{"pid": N}`` or ``{"error": "refused"
| "stale" | "elsewhere"}``. :func:`serve` is the one loop (peer check, stamp, place, answers);
:func:`request` is the one client; :class:`Unavailable` is its one failure.

Rules:
* Requests only from the same user (SO_PEERCRED); anything else is ``refused``.
* A request stamped with other code (:func:`code_identity`: another interpreter or package
  directory) is answered ``stale`` and the warm process exits: the caller starts a fresh one
  (``Unavailable.restart``). So is every request once the package's files changed since the
  warm process loaded them: it watches them (:class:`CodeWatch`, inotify), so the caller
  need not stat every file of the package on each request (~1.2 ms of every ``start``).
* A worker lives where its warm process lives, so a caller in other namespaces or cgroups
  (:func:`where_am_i`) is answered ``elsewhere`` and does the work itself.
* A warm process only ever makes something faster: every failure is :class:`Unavailable`, and
  the caller falls back to doing the work itself.
No asyncio, protobuf or dataclasses here: ``start`` imports this module, and its client side
(:func:`bind_unique`, :func:`request`, :func:`sha256_hex`) uses only modules built into the
interpreter (``_socket``, ``_json``, ``_sha256``): ``socket``, ``json`` (which imports ``re``)
and ``hashlib`` (which loads OpenSSL) cost ``start`` ~15 ms of CPU together. The server side
imports them.
"""

from __future__ import annotations

import _socket
import gc
import os
import sys
import time

TYPE_CHECKING = False  # (importing typing would cost start-up time; see shim.cli)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence

__all__ = [
    "NAMESPACES",
    "PACKAGE_DIR",
    "RUN_DIR",
    "CodeWatch",
    "Request",
    "Unavailable",
    "answer",
    "bind_unique",
    "code_identity",
    "code_stamp",
    "decode_json",
    "encode_json",
    "in_host_namespaces",
    "parse_answer",
    "request",
    "serve",
    "sha256_hex",
    "socket_is_live",
    "sweep",
    "unlink_if_ours",
    "where_am_i",
]

RUN_DIR = "/run/containerd-shim-pyrunc"  # short: socket paths end at 107 bytes
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Every namespace a forked process inherits. ``time`` included: a daemon forked by a warm
# process in the host's time namespace would read other clocks (CLOCK_MONOTONIC/BOOTTIME
# offsets) than a caller in its own, so such a caller is "elsewhere" and not the host. A
# kernel without a kind of namespace (time before 5.6) simply has no link for it.
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
_MAX_REQUEST = 1 << 20
_TIMEOUT = 5.0
_ORPHAN_CHECK = 60.0  # seconds between checks that the socket file is still this server's


class Unavailable(Exception):
    """No worker from the warm process; ``restart`` says whether a new one should start
    (there was none, or it ran other code)."""

    def __init__(self, reason: str, *, restart: bool) -> None:
        super().__init__(reason)
        self.restart = restart


# -- identity --------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, from the interpreter's built-in module where it has one
    (``hashlib`` would load OpenSSL's library first: ~2.5 ms of every ``start``)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:  # an interpreter that builds it elsewhere
        from hashlib import sha256
    return str(sha256(data).hexdigest())


def encode_json(value: object) -> str:
    """``value`` (dicts with str keys, lists, tuples, str, int, bool, None) as
    ``json.dumps(value, sort_keys=True)`` writes it, without importing ``json``.

    Raises:
        TypeError: a value of another type.
    """
    from _json import encode_basestring_ascii as quote

    if isinstance(value, str):
        return str(quote(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ", ".join(f"{quote(k)}: {encode_json(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(encode_json(v) for v in value) + "]"
    raise TypeError(f"not encodable: {type(value).__name__}")


_JSON_SPACE = " \t\n\r"


class _Defaults:
    """What the interpreter's JSON scanner (``_json``) reads from its context: the
    defaults of ``json.loads``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__


def decode_json(text: str | bytes) -> object:
    """``json.loads(text)``, without importing ``json`` (which imports ``re``: ~5 ms of a
    ``start``) when ``text`` is well-formed UTF-8 or str: the interpreter's C scanner reads
    it. Anything else (not JSON, a byte order mark, UTF-16 or UTF-32) goes to ``json.loads``,
    which reads it as it would or says what is wrong.

    Raises:
        ValueError: ``text`` is not JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``).
    """
    from _json import make_scanner

    try:
        decoded = text.decode() if isinstance(text, bytes) else text
    except UnicodeDecodeError:
        decoded = ""  # for json.loads below
    start = len(decoded) - len(decoded.lstrip(_JSON_SPACE))
    try:
        # (typeshed types the context as a scanner: any object with these attributes does)
        value, end = make_scanner(_Defaults)(decoded, start)  # type: ignore[arg-type]
    except (ValueError, StopIteration, SystemError):
        pass  # SystemError: the scanner's own error needs the json module to be raised
    else:
        if not decoded[end:].strip(_JSON_SPACE):
            return value
    import json

    return json.loads(text)


def code_stamp(root: str = PACKAGE_DIR) -> str:
    """What identifies the code this process runs: the interpreter and the files of the
    package (path, mtime and size of every ``.py`` under ``root``)."""
    parts = [f"{sys.executable}\0{root}"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                parts.append(f"{path}:{st.st_mtime_ns}:{st.st_size}")
    return sha256_hex("\0".join(parts).encode())


def code_identity(root: str = PACKAGE_DIR) -> str:
    """What a request is stamped with: the interpreter and the package directory (a warm
    process of another installation or interpreter is stale). Changes to the package's files
    are the warm process's own to see (:class:`CodeWatch`)."""
    return sha256_hex(f"{sys.executable}\0{root}".encode())


# inotify(7): what a change to a package file or directory shows as
_IN_CHANGES = (
    0x2  # IN_MODIFY
    | 0x4  # IN_ATTRIB
    | 0x8  # IN_CLOSE_WRITE
    | 0x40  # IN_MOVED_FROM
    | 0x80  # IN_MOVED_TO
    | 0x100  # IN_CREATE
    | 0x200  # IN_DELETE
    | 0x400  # IN_DELETE_SELF
    | 0x800  # IN_MOVE_SELF
)
_IN_ALWAYS = 0x400 | 0x800 | 0x4000 | 0x8000  # *_SELF, IN_Q_OVERFLOW, IN_IGNORED
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class CodeWatch:
    """Whether any ``.py`` file (or directory) under a package directory changed since the
    watch began: inotify watches on every directory but ``__pycache__``. Start it before
    the code is imported, so that no change goes unseen; a change made since is seen by the
    next :meth:`changed`, which only reads what the kernel queued (one system call)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._changed = False

    @classmethod
    def start(cls, root: str = PACKAGE_DIR) -> CodeWatch | None:
        """Watch ``root``; None where inotify cannot (no such call, out of watches)."""
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        for dirpath, dirnames, _files in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if libc.inotify_add_watch(fd, os.fsencode(dirpath), _IN_CHANGES) < 0:
                os.close(fd)
                return None
        return cls(fd)

    def changed(self) -> bool:
        """True once a package file or directory was written, created, removed or renamed."""
        while not self._changed:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            self._changed = any(_is_code_change(mask, name) for mask, name in _events(data))
        return self._changed

    def close(self) -> None:
        os.close(self._fd)


def _events(data: bytes) -> list[tuple[int, str]]:
    """``(mask, name)`` of each ``struct inotify_event`` in ``data``."""
    events = []
    i = 0
    while i + 16 <= len(data):
        mask = int.from_bytes(data[i + 4:i + 8], sys.byteorder)
        size = int.from_bytes(data[i + 12:i + 16], sys.byteorder)
        name = data[i + 16:i + 16 + size].split(b"\0", 1)[0]
        events.append((mask, name.decode(errors="replace")))
        i += 16 + size
    return events


def _is_code_change(mask: int, name: str) -> bool:
    if mask & _IN_ALWAYS:
        return True  # a watched directory itself went, or events were lost
    if mask & _IN_ISDIR:
        return name != "__pycache__"
    return name.endswith(".py")


def _namespaces(pid: int | str, proc: str = "/proc") -> dict[str, str]:
    """``pid``'s namespace links; a kind this kernel lacks reads as ``""``.

    Raises:
        OSError: the process's links cannot be read at all.
    """
    links: dict[str, str] = {}
    for ns in NAMESPACES:
        try:
            links[ns] = os.readlink(f"{proc}/{pid}/ns/{ns}")
        except FileNotFoundError:
            links[ns] = ""
    return links


def where_am_i() -> dict[str, str]:
    """This process's namespaces and cgroups: what a forked worker would inherit."""
    place: dict[str, str] = {}
    for ns in NAMESPACES:
        try:
            place[ns] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            place[ns] = ""
    with open("/proc/self/cgroup") as f:
        place["cgroups"] = f.read()
    return place


def in_host_namespaces(proc: str = "/proc") -> bool:
    """True if this process shares every namespace with the host's own kernel threads. Only
    then are warm processes used (and started): one started from a containerd in, say, a
    test's network namespace would serve and outlive that namespace.

    The host is told by kthreadd, which is pid 2 only in the initial PID namespace: in a
    child PID namespace with a /proc of its own, pid 1 is that namespace's init, which
    shares the caller's namespaces and would pass for the host (a fork server started there
    would take the host's socket path), and pid 2 is some other process. pid 1 is not
    consulted (a VM's init may also refuse to show its namespaces)."""
    try:
        with open(f"{proc}/2/comm") as f:
            if f.read().strip() != "kthreadd":
                return False
        return _namespaces(2, proc) == _namespaces("self", proc)
    except OSError:
        return False


# -- sockets ---------------------------------------------------------------------------


def bind_unique(
    path: str, backlog: int = 64, *, lock: bool = False
) -> tuple[_socket.socket, int] | None:
    """Listen on ``path`` (mode 0600, in a 0700 directory), replacing a dead server's socket
    file; return the socket and the inode of its file, or None if a live server already
    serves there. The file appears (by rename) only once the socket listens. The socket is
    a bare ``_socket.socket`` (see the module's docstring); ``socket.socket(fileno=
    s.detach())`` makes a full one.

    With ``lock``, the check and the replacement hold ``<path>.lock`` (flock): two servers
    starting together would otherwise both find no server, and the second would replace the
    first one's fresh socket, leaving it serving a path nobody reaches (the shim's own socket
    needs no lock: containerd starts one shim per group at a time).
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if not lock:
        return _bind_unique(path, backlog)
    fd = _lock(path)
    try:
        return _bind_unique(path, backlog)
    finally:
        os.close(fd)  # releases the lock


def _lock(path: str) -> int:
    """Hold ``<path>.lock`` (flock) and return its descriptor; closing it releases the lock.
    The lock file may be removed by whoever holds it (a server that ends, :func:`sweep`), so
    a lock taken on a file that is no longer at the path is taken again on the new one."""
    import fcntl

    while True:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(f"{path}.lock").st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlink_lock_held(path: str) -> None:
    """Remove ``<path>.lock`` while holding it (see :func:`_lock`)."""
    try:
        os.unlink(f"{path}.lock")
    except FileNotFoundError:
        return


def sweep(directory: str = RUN_DIR, *, keep: str = "") -> list[str]:
    """Remove the socket files of warm processes that died without removing them (a server
    killed by a signal, e.g. with the cgroup it lived in); ``keep`` is the caller's own
    socket. A socket is dead when :func:`socket_is_live` says so; each is checked and removed
    under its lock, so a server binding it meanwhile is never touched. No lock file is left
    behind, beside a live socket either: one is of use only while held (:func:`_lock`), and
    the sweep would otherwise leave the one it made beside a server that takes no lock (a
    network rebuild service) for nobody to remove. Returns the socket paths removed."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    paths = {f"{directory}/{n.removesuffix('.lock')}" for n in names
             if n.endswith((".sock", ".sock.lock"))}
    removed = []
    for path in sorted(paths - {keep}):
        fd = _lock(path)
        try:
            if os.path.exists(path) and not socket_is_live(path):
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass  # its server removed it meanwhile (a rebuild service takes no lock)
            _unlink_lock_held(path)
        finally:
            os.close(fd)
    return removed


def socket_is_live(path: str | os.PathLike[str]) -> bool:
    """Whether a server may be behind the unix socket file at ``path``: the one rule of every
    check before a socket file is replaced or removed (a warm process's, a shim's, the CRI
    endpoint's). Never blocks: the probe connects without waiting and closes at once (a
    server sees a connection that brings nothing).

    Dead (False): the connect is refused (``ECONNREFUSED``: nobody listens on the file, or
    it is no socket) or there is no file (``ENOENT``).
    Live (True): the connect succeeds; or it fails otherwise: ``EAGAIN`` is a live server
    whose backlog is full, and any other error (``EACCES``, a socket of another type, ...)
    is a file this process cannot judge, which is left alone.
    """
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def _bind_unique(path: str, backlog: int) -> tuple[_socket.socket, int] | None:
    if socket_is_live(path):
        return None  # another server is serving
    if os.path.exists(path):
        os.unlink(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}"
    with_tmp = False
    try:
        sock.bind(tmp)
        with_tmp = True
        os.chmod(tmp, 0o600)
        sock.listen(backlog)
        inode = os.stat(tmp).st_ino
        os.rename(tmp, path)
    except BaseException:
        sock.close()
        if with_tmp:
            os.unlink(tmp)
        raise
    return sock, inode


def _still_at(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False


def unlink_if_ours(path: str, inode: int) -> bool:
    """Remove the socket file ``path`` unless a newer server has already replaced it (a
    server's or a shim's own socket, at exit); True if it was removed."""
    try:
        if os.stat(path).st_ino != inode:
            return False
        os.unlink(path)
    except OSError:
        return False
    return True


def _read_all(conn: _socket.socket, data: bytes = b"") -> bytes:
    while chunk := conn.recv(65536):
        data += chunk
    return data


# -- the protocol ----------------------------------------------------------------------


def request(
    path: str,
    fields: dict[str, object],
    *,
    what: str,
    fds: Sequence[int] = (),
    place: dict[str, str] | None = None,
) -> int:
    """Ask the warm process on ``path`` for a worker: send this process's stamp and place
    with ``fields`` (and ``fds``), return the worker's pid. Blocks for up to 5 s.

    Args:
        path: the warm process's socket.
        fields: what its handler needs (JSON values).
        what: the warm process's name, for messages.
        fds: file descriptors to pass along.
        place: this process's :func:`where_am_i`, if the caller has it already.
    Returns:
        The worker's pid.
    Raises:
        Unavailable: no warm process (``restart``), a stale one (``restart``), a broken one,
            one that refused or lives elsewhere; the caller does the work itself.
    """
    if place is None:
        place = where_am_i()
    message = encode_json({"stamp": code_identity(), "place": place, **fields}).encode()
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(_TIMEOUT)
        try:
            conn.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:  # dead (socket_is_live)
            raise Unavailable(f"no {what}: {exc}", restart=True) from exc
        if fds:
            rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
            sent = conn.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            conn.sendall(message[sent:])
        else:
            conn.sendall(message)
        conn.shutdown(_socket.SHUT_WR)
        pid, error = parse_answer(_read_all(conn))
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{what} failed: {exc}", restart=False) from exc
    finally:
        conn.close()
    if pid > 0:
        return pid
    raise Unavailable(f"{what} answered {error!r}", restart=error == "stale")


def answer(pid: int = 0, error: str = "") -> bytes:
    """The server's answer: ``{"pid": N}``, or ``{"error": "..."}`` without a pid."""
    return (encode_json({"pid": pid}) if pid > 0 else encode_json({"error": error})).encode()


def parse_answer(data: bytes) -> tuple[int, str]:
    """``(pid, "")`` or ``(0, error)`` from an :func:`answer` (parsed by its two exact
    shapes: the client imports no ``json``).

    Raises:
        ValueError: anything else.
    """
    text = data.decode()
    if text.startswith('{"pid": ') and text.endswith("}") and text[8:-1].isdigit():
        return int(text[8:-1]), ""
    head, tail = '{"error": "', '"}'
    if text.startswith(head) and text.endswith(tail) and '"' not in text[len(head):-2]:
        return 0, text[len(head):-2]
    raise ValueError(f"not an answer: {text[:200]!r}")


class Request:
    """One accepted request, as :func:`serve` hands it to its handler: the caller's fields,
    the file descriptors it passed (closed by :func:`serve` afterwards), and
    :meth:`close_sockets` for a forked worker to let go of the warm process's sockets."""

    __slots__ = ("_sockets", "fds", "fields")

    def __init__(
        self, fields: dict[str, object], fds: list[int], sockets: tuple[socket.socket, ...]
    ) -> None:
        self.fields = fields
        self.fds = fds
        self._sockets = sockets

    def close_sockets(self) -> None:
        """In a forked worker: close the listener and the connection it inherited (else it
        would keep the warm process's socket served after the warm process is gone)."""
        for sock in self._sockets:
            sock.close()


def _freeze_heap() -> None:
    """Move every object this server made (its imports) out of the garbage collector's
    reach. A worker forked from it shares those pages copy-on-write; a collection in the
    worker would walk all of them and write their GC headers, copying nearly every page
    (measured: a forked daemon's private dirty memory 7 MiB after a collection, 2 MiB with
    the heap frozen). Frozen objects are never collected: they live as long as the
    process anyway."""
    gc.collect()
    _plug_holes()
    gc.freeze()


# Kept for the life of the warm process: they fill its allocator's free blocks.
_plugs: list[object] = []


def _free_blocks() -> dict[int, int]:
    """Free blocks per pymalloc size class (block size -> count), from
    ``sys._debugmallocstats`` (which writes to fd 2); empty if it cannot be read."""
    saved = os.dup(2)
    fd = os.memfd_create("mallocstats")
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with os.fdopen(fd, "rb") as f:
        f.seek(0)
        text = f.read().decode(errors="replace")
    free: dict[int, int] = {}
    for line in text.split("\n\n", 1)[-1].split("\n\n", 1)[0].splitlines():
        cols = line.split()
        if len(cols) == 5 and all(c.isdigit() for c in cols):
            free[int(cols[1])] = int(cols[4])
    return free


def _plug_holes() -> None:
    """Fill the free blocks of the small-object allocator's pools with objects that live as
    long as this process. A worker forked from it would otherwise put its new objects into
    those holes, scattered over pages it shares with this process, and copy a 4 KiB page
    for each small object; with no holes, its new objects go to fresh pools, packed (an idle
    daemon's private anonymous memory: 2671 -> 2545 KiB). Blocks of 16 bytes are left
    (nothing that small is made often)."""
    for _ in range(2):  # the list that holds them takes blocks too
        for size, count in _free_blocks().items():
            if size == 32:  # a two-digit int: 24 + 2 * 4 bytes
                _plugs.extend((1 << 40) + i for i in range(count))
            elif size >= 48:  # bytes: a 33-byte header and the contents
                _plugs.extend(bytes(size - 33) for _ in range(count))


def serve(
    path: str,
    handle: Callable[[Request], int],
    *,
    fds: int = 0,
    idle: float | None = None,
    ready: Callable[[], None] | None = None,
    watch: CodeWatch | None = None,
    after: Callable[[], None] | None = None,
) -> None:
    """Serve requests on ``path`` one at a time until a stale request comes (or ``idle``
    seconds pass without one, or the package's files change); ``handle`` forks the worker
    and returns its pid, which is the answer. Returns at once if another server serves
    ``path``.

    Args:
        path: the socket to listen on (see :func:`bind_unique`).
        handle: makes the worker for a request that passed every check.
        fds: how many file descriptors a request must carry.
        idle: seconds without a request after which the server ends; None: never.
        ready: called once the socket is ours and the heap frozen, before the first
            request (e.g. to show the server's title: a server that finds another one
            serving exits without ever looking like one).
        watch: the watch on the package's files, started before the code was imported
            (:class:`CodeWatch`; serve closes it); None: one is started here. Without
            inotify the files' :func:`code_stamp` is taken again at each request.
        after: called after each request is answered and its connection closed (work
            for the next request, off this one's path).
    """

    if watch is None:
        watch = CodeWatch.start()
    try:
        _serve(path, handle, fds, idle, ready, watch, after)
    finally:
        if watch is not None:
            watch.close()


def _serve(
    path: str,
    handle: Callable[[Request], int],
    fds: int,
    idle: float | None,
    ready: Callable[[], None] | None,
    watch: CodeWatch | None,
    after: Callable[[], None] | None,
) -> None:
    import json
    import socket

    bound = bind_unique(path, lock=True)
    if bound is None:
        return
    listener, inode = socket.socket(fileno=bound[0].detach()), bound[1]
    # requests meanwhile wait in the backlog
    stamp, place = code_identity(), where_am_i()
    files = code_stamp() if watch is None else ""

    def code_changed() -> bool:
        return watch.changed() if watch is not None else code_stamp() != files

    _freeze_heap()
    if ready is not None:
        ready()
    listener.settimeout(_ORPHAN_CHECK if idle is None else min(idle, _ORPHAN_CHECK))
    my_uid = os.geteuid()
    last = time.monotonic()
    swept = False
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if not swept:  # once, in the first quiet moment: dead servers' files
                    swept = True
                    sweep(os.path.dirname(path), keep=path)
                if idle is not None and time.monotonic() - last >= idle:
                    return
                if watch is not None and watch.changed():
                    return  # its code is stale: the next request starts a fresh server
                if not _still_at(path, inode):
                    return  # replaced: nobody can reach this server any more
                continue
            last = time.monotonic()
            answered = False
            with conn:
                conn.settimeout(_TIMEOUT)
                try:
                    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    data, got, _flags, _addr = socket.recv_fds(conn, _MAX_REQUEST, max(fds, 1))
                    fields = json.loads(_read_all(conn, data))
                except (OSError, ValueError):
                    continue
                try:
                    uid = int.from_bytes(creds[4:8], sys.byteorder)
                    if uid != my_uid or len(got) != fds or not isinstance(fields, dict):
                        conn.sendall(answer(error="refused"))
                    elif fields.get("stamp") != stamp or code_changed():
                        conn.sendall(answer(error="stale"))
                        return
                    elif fields.get("place") != place:
                        conn.sendall(answer(error="elsewhere"))  # other namespaces or cgroups
                    else:
                        pid = handle(Request(fields, got, (listener, conn)))
                        conn.sendall(answer(pid, "no worker"))
                        answered = True
                except (OSError, KeyError, ValueError):
                    continue
                finally:
                    for fd in got:
                        os.close(fd)
            if answered and after is not None:
                after()  # the caller has its answer (and end-of-file) already
    finally:
        listener.close()
        fd = _lock(path)
        try:
            if unlink_if_ours(path, inode):
                _unlink_lock_held(path)  # a newer server's lock file stays with its socket
        finally:
            os.close(fd)
