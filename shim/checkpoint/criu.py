"""CRIU's RPC interface (``criu swrk``): the message codec, an async client, and the
capability check that runs before a checkpoint touches a container.

Strategy: mirrors runc ``libcontainer/container_linux.go`` (``criuSwrk``, ``checkCriuFeatures``,
``checkCriuVersion``) and go-criu ``main.go`` (``GetCriuVersion``). Three layers, top to bottom:

* **Codec (sans-IO).** :func:`encode_request`, :func:`encode_notify_reply`,
  :func:`decode_response` and :func:`check_response` turn values into packet bytes and back;
  they do no I/O. One ``criu_req``/``criu_resp`` per SOCK_SEQPACKET packet, no length prefix
  (``docs/shim-protocol.md`` section 6). :class:`CriuVersion` carries go-criu's version integer.
* **Client.** :class:`Criu` runs one ``criu swrk 3`` per call: a socketpair whose other end is
  criu's fd 3, one request, then response packets until a non-NOTIFY one (each NOTIFY is handed
  to a callback and answered with ``notify_success``), then the exit through the one reaper
  (:mod:`shim.reaper`; nothing here waits for a pid). Socket reads are non-blocking on the
  event loop (``recvmsg`` from an ``add_reader`` callback, so SCM_RIGHTS fds that CRIU attaches
  to a notification, e.g. ``orphan-pts-master``, are received). Every call has a timeout; on
  timeout, cancellation or a broken conversation criu is SIGKILLed and its exit awaited.
* **Capabilities.** :func:`ensure_capable` compares :class:`Requirements` with what CRIU
  (VERSION, FEATURE_CHECK; cached per binary, they do not change while we run) and the host
  (``fs.pipe-max-size``, CAP_SYS_RESOURCE; read every time, an admin may change them) offer,
  and raises :class:`~shim.errors.FailedPrecondition` naming each missing capability. The rules
  are the pure function :func:`unmet_requirements`.

Fds named in ``criu_opts`` (``images_dir_fd``, ``work_dir_fd``, ``status_fd``) are resolved by
CRIU as ``/proc/<our pid>/fd/<n>``: keep them open in this process for the whole call. Fds that
CRIU must *inherit* (``inherit_fd``) go in ``extra_fds`` and are criu's 4, 5, ... (3 is the
RPC socket).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import enum
import errno
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace

from google.protobuf.message import DecodeError, EncodeError

from shim.api.criu import rpc_pb2
from shim.errors import FailedPrecondition, Internal, InvalidArgument
from shim.reaper import Exit, Reaper
from shim.spawn import spawn
from shim.warm import RUN_DIR

__all__ = [
    "DEFAULT_TIMEOUT",
    "LAZY_PAGES_PIPE_SIZE",
    "MAX_PACKET",
    "Criu",
    "CriuCapabilities",
    "CriuError",
    "CriuExited",
    "CriuFeatures",
    "CriuProtocolError",
    "CriuRequestFailed",
    "CriuResponse",
    "CriuVersion",
    "HostFacts",
    "Notification",
    "NotifyHandler",
    "PageServerInfo",
    "ReqType",
    "Requirements",
    "check_response",
    "clear_capability_cache",
    "criu_binary",
    "decode_response",
    "encode_notify_reply",
    "encode_request",
    "ensure_capable",
    "format_version",
    "log_errors",
    "log_reason",
    "parse_cap_eff",
    "probe",
    "read_host_facts",
    "unmet_requirements",
]

DEFAULT_TIMEOUT = 60.0
"""Seconds a call may take unless the caller says otherwise (dumps of big containers need more)."""

MAX_PACKET = 64 * 1024
"""Largest response packet accepted (runc reads 40 KiB); a longer one is a protocol error."""

LAZY_PAGES_PIPE_SIZE = 4 * 1024 * 1024
"""Pipe size CRIU's lazy page server sets (about 3.2 MiB, rounded up by the kernel to 4 MiB).
Above ``fs.pipe-max-size`` that needs CAP_SYS_RESOURCE, and CRIU ignores the failure and then
splices into fd -1 (see ``docs/lazy-migration.md``)."""

CAP_SYS_RESOURCE = 24
_MAX_FDS = 16  # fds accepted with one notification (CRIU sends at most one)
_KILL_GRACE = 5.0  # seconds to wait for a SIGKILLed criu to be reaped
_SWRK_FD = 3  # criu's end of the socketpair, inside criu


# --------------------------------------------------------------------------------------------
# Codec (sans-IO)


class ReqType(enum.IntEnum):
    """``criu_req_type``: the request kinds, also used as the type of each response."""

    EMPTY = 0
    DUMP = 1
    RESTORE = 2
    CHECK = 3
    PRE_DUMP = 4
    PAGE_SERVER = 5
    NOTIFY = 6
    CPUINFO_DUMP = 7
    CPUINFO_CHECK = 8
    FEATURE_CHECK = 9
    VERSION = 10
    WAIT_PID = 11
    PAGE_SERVER_CHLD = 12
    SINGLE_PRE_DUMP = 13


# Response types CRIU uses to answer each request, where they differ from the request's own.
_ANSWER_TYPES: dict[ReqType, frozenset[ReqType]] = {
    ReqType.PAGE_SERVER_CHLD: frozenset({ReqType.PAGE_SERVER, ReqType.PAGE_SERVER_CHLD}),
}


class CriuError(Internal):
    """A CRIU call went wrong (base class)."""


class CriuProtocolError(CriuError):
    """CRIU sent something that is not a valid answer (undecodable, truncated, wrong type)."""


class CriuRequestFailed(CriuError):
    """CRIU answered ``success=false``; carries its ``cr_errno`` and ``cr_errmsg``.

    Attributes:
        request: the request that failed.
        cr_errno: CRIU's errno for the failure, if it sent one.
        cr_errmsg: CRIU's error text (its first logged error), "" if none.
        log_path: the CRIU log file of the call, if the caller named one.
    """

    def __init__(
        self,
        request: ReqType,
        cr_errno: int | None = None,
        cr_errmsg: str = "",
        log_path: str | None = None,
    ) -> None:
        self.request = request
        self.cr_errno = cr_errno
        self.cr_errmsg = cr_errmsg
        self.log_path = log_path
        message = f"criu {request.name} failed"
        if cr_errno:
            message += f" (errno {cr_errno} {errno.errorcode.get(cr_errno, '?')})"
        if cr_errmsg.strip():
            message += f": {cr_errmsg.strip()}"
        if log_path:
            message += f"\nlog file: {log_path}"
        super().__init__(message)


class CriuExited(CriuError):
    """criu exited (or was killed) before it answered, or exited with an error afterwards.

    Attributes:
        request: the request in flight.
        status: criu's exit status (128 + signal when signalled), None if not reaped.
    """

    def __init__(self, request: ReqType, status: int | None, detail: str) -> None:
        self.request = request
        self.status = status
        super().__init__(f"criu swrk {detail} ({request.name} request, {_describe(status)})")


def _describe(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if status > 128 and status - 128 < signal.NSIG:
        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            name = f"signal {status - 128}"
        return f"killed by {name}"
    return f"exit status {status}"


@dataclass(frozen=True, slots=True)
class CriuVersion:
    """``criu_version``: CRIU's release numbers as reported by the VERSION request."""

    major: int
    minor: int
    sublevel: int = 0
    extra: int = 0
    gitid: str = ""
    name: str = ""

    @property
    def number(self) -> int:
        """go-criu's integer: ``major*10000 + minor*100 + sublevel``; a git build (``gitid``
        set) is newer than its release, so it is rounded up to the next minor (runc does so)."""
        n = self.major * 10000 + self.minor * 100 + self.sublevel
        if self.gitid:
            n = n - n % 100 + 100
        return n

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.sublevel:
            text += f".{self.sublevel}"
        if self.gitid:
            text += f" (git {self.gitid})"
        return text


def format_version(number: int) -> str:
    """Render a go-criu version integer: 31900 -> "3.19", 31701 -> "3.17.1"."""
    major, rest = divmod(number, 10000)
    minor, sublevel = divmod(rest, 100)
    return f"{major}.{minor}.{sublevel}" if sublevel else f"{major}.{minor}"


@dataclass(frozen=True, slots=True)
class CriuFeatures:
    """``criu_features``; in a request True = "ask about this", in an answer None = not asked.

    Attributes:
        mem_track: the kernel tracks dirty memory (soft-dirty): pre-dump, incremental dumps.
        lazy_pages: non-cooperative userfaultfd: lazy restore (post-copy migration).
        pidfd_store: pidfd_open + pidfd_getfd: pid reuse detection across pre-dumps.
    """

    mem_track: bool | None = None
    lazy_pages: bool | None = None
    pidfd_store: bool | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A ``criu_notify``: CRIU reached ``script`` (``pre-dump``, ``post-restore``, ...).

    ``pid`` is 0 unless CRIU sent one (``setup-namespaces``, ``post-restore``). ``fds`` are the
    descriptors that came with the packet (``orphan-pts-master`` sends the pty master); the
    client closes them after the handler returns, so a handler that keeps one must dup it.
    """

    script: str
    pid: int = 0
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PageServerInfo:
    """``criu_page_server_info`` from a PAGE_SERVER answer."""

    address: str = ""
    port: int | None = None
    pid: int | None = None
    fd: int | None = None


@dataclass(frozen=True, slots=True)
class CriuResponse:
    """A decoded ``criu_resp``; optional fields CRIU did not send are None."""

    type: ReqType
    success: bool
    cr_errno: int | None = None
    cr_errmsg: str = ""
    notify: Notification | None = None
    version: CriuVersion | None = None
    features: CriuFeatures | None = None
    dump_restored: bool | None = None
    restore_pid: int | None = None
    page_server: PageServerInfo | None = None
    status: int | None = None


def encode_request(
    type: ReqType,
    opts: rpc_pb2.criu_opts | None = None,
    features: CriuFeatures | None = None,
    *,
    keep_open: bool = False,
    pid: int | None = None,
) -> bytes:
    """Serialize one ``criu_req`` packet.

    Args:
        type: the request kind.
        opts: ``criu_opts`` (its required ``images_dir_fd`` must be set; -1 with
            ``images_dir`` names the directory by path).
        features: for FEATURE_CHECK, the features to ask about (True fields).
        keep_open: ask CRIU to take further requests on the same socket.
        pid: for WAIT_PID.
    Returns:
        The packet bytes.
    Raises:
        InvalidArgument: ``opts`` lacks a required field.
    """
    req = rpc_pb2.criu_req(type=type.name)
    if opts is not None:
        req.opts.CopyFrom(opts)
    if features is not None:
        if features.mem_track is not None:
            req.features.mem_track = features.mem_track
        if features.lazy_pages is not None:
            req.features.lazy_pages = features.lazy_pages
        if features.pidfd_store is not None:
            req.features.pidfd_store = features.pidfd_store
    if keep_open:
        req.keep_open = True
    if pid is not None:
        req.pid = pid
    try:
        data: bytes = req.SerializeToString()
    except EncodeError as exc:
        raise InvalidArgument(f"incomplete criu {type.name} request: {exc}") from exc
    return data


def encode_notify_reply(success: bool) -> bytes:
    """Serialize the answer to a NOTIFY: ``criu_req{type=NOTIFY, notify_success=success}``.
    False makes CRIU abort the operation ("RPC client reported script error")."""
    data: bytes = rpc_pb2.criu_req(type="NOTIFY", notify_success=success).SerializeToString()
    return data


def decode_response(data: bytes) -> CriuResponse:
    """Parse one ``criu_resp`` packet. An unsuccessful answer is returned, not raised (see
    :func:`check_response`).

    Raises:
        CriuProtocolError: the bytes are not a complete ``criu_resp`` of a known type.
    """
    msg = rpc_pb2.criu_resp()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise CriuProtocolError(f"undecodable criu_resp ({len(data)} bytes): {exc}") from exc
    if not msg.IsInitialized():  # upb's parser does not enforce proto2 required fields
        missing = ", ".join(msg.FindInitializationErrors())
        raise CriuProtocolError(f"criu_resp ({len(data)} bytes) lacks required fields: {missing}")
    try:
        rtype = ReqType(msg.type)
    except ValueError as exc:
        raise CriuProtocolError(f"criu_resp of unknown type {msg.type}") from exc
    notify = version = features = page_server = None
    if msg.HasField("notify"):
        n = msg.notify
        notify = Notification(script=n.script, pid=n.pid)
    if msg.HasField("version"):
        v = msg.version
        version = CriuVersion(
            major=v.major_number,
            minor=v.minor_number,
            sublevel=v.sublevel,
            extra=v.extra,
            gitid=v.gitid,
            name=v.name,
        )
    if msg.HasField("features"):
        f = msg.features
        features = CriuFeatures(
            mem_track=f.mem_track if f.HasField("mem_track") else None,
            lazy_pages=f.lazy_pages if f.HasField("lazy_pages") else None,
            pidfd_store=f.pidfd_store if f.HasField("pidfd_store") else None,
        )
    if msg.HasField("ps"):
        ps = msg.ps
        page_server = PageServerInfo(
            address=ps.address,
            port=ps.port if ps.HasField("port") else None,
            pid=ps.pid if ps.HasField("pid") else None,
            fd=ps.fd if ps.HasField("fd") else None,
        )
    return CriuResponse(
        type=rtype,
        success=msg.success,
        cr_errno=msg.cr_errno if msg.HasField("cr_errno") else None,
        cr_errmsg=msg.cr_errmsg,
        notify=notify,
        version=version,
        features=features,
        dump_restored=msg.dump.restored if msg.HasField("dump") else None,
        restore_pid=msg.restore.pid if msg.HasField("restore") else None,
        page_server=page_server,
        status=msg.status if msg.HasField("status") else None,
    )


def check_response(
    resp: CriuResponse, request: ReqType, *, log_path: str | None = None
) -> CriuResponse:
    """Accept ``resp`` as the final answer to ``request`` or raise.

    Args:
        resp: the decoded answer.
        request: what was asked.
        log_path: CRIU's log file for this call, named in the error.
    Returns:
        ``resp`` unchanged.
    Raises:
        CriuRequestFailed: ``success`` is false (whatever the type: CRIU answers a request it
            cannot parse with type EMPTY).
        CriuProtocolError: a successful answer of another type.
    """
    if not resp.success:
        raise CriuRequestFailed(request, resp.cr_errno, resp.cr_errmsg, log_path)
    allowed = _ANSWER_TYPES.get(request, frozenset({request}))
    if resp.type not in allowed:
        raise CriuProtocolError(f"criu answered a {request.name} request with {resp.type.name}")
    return resp


def log_errors(text: str, *, limit: int = 10) -> str:
    """Pick the error and warning lines of a CRIU log (its own text is read only here).

    Returns:
        The last ``limit`` lines that CRIU logged as ``Error``/``Warn``, joined by newlines,
        else the last non-empty line, else "".
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    picked = [line for line in lines if _is_problem(line)]
    if picked:
        return "\n".join(picked[-limit:])
    return lines[-1] if lines else ""


_LOG_ERROR = re.compile(r"^(?:\([0-9.]+\)\s+)?(?:[0-9]+: )?Error \([^)]*\): (.*)$")
# Error lines that say nothing about the cause: CRIU's closing summaries, what failed because
# of an earlier error, and a harmless one of hosts where root lacks CAP_SYS_RESOURCE.
_CONSEQUENCES = re.compile(
    r"^(?:Dumping FAILED\.|Restoring FAILED\.|Dump files \(pid: [0-9]+\) failed with -1"
    r"|Unable to open fd=|cg: cgroupd: recv req error|rlimit: Can't setup RLIMIT_NOFILE)"
)


def log_reason(text: str, *, limit: int = 2) -> str:
    """CRIU's own words for why a dump or restore failed, for an error message.

    Returns:
        The first ``limit`` ``Error`` lines of the log that are not consequences or summaries
        (see ``_CONSEQUENCES``), without timestamp, pid and source location, joined by
        ``"; "``; "" if there is none.
    """
    found: list[str] = []
    for line in text.splitlines():
        m = _LOG_ERROR.match(line.strip())
        if m and m.group(1) and not _CONSEQUENCES.match(m.group(1)):
            found.append(m.group(1).strip())
            if len(found) == limit:
                break
    return "; ".join(found)


def _is_problem(line: str) -> bool:
    # "(00.012) Error (criu/cr-check.c:123): ..." with timestamps (log_level >= 3),
    # "Error (criu/...): ..." / "Warn  (criu/...): ..." without.
    if line.startswith("("):
        line = line.partition(")")[2].lstrip()
    return line.startswith(("Error", "Warn"))


# --------------------------------------------------------------------------------------------
# Client

NotifyHandler = Callable[[Notification], bool | Awaitable[bool]]
"""Called for each NOTIFY; returns (or resolves to) whether the step succeeded. False, or an
exception, makes CRIU abort the operation; the exception is re-raised once CRIU answered."""


def _accept_all(_: Notification) -> bool:
    return True


class Criu:
    """An async client of ``criu swrk``; one criu process per call.

    Args:
        reaper: the daemon's reaper (installed on the running loop).
        binary: the criu executable (a path, or a name looked up in PATH).
        output: fd for criu's stdout and stderr (None = /dev/null). CRIU writes its log to
            ``opts.log_file`` in the work dir, not there.
    """

    def __init__(self, reaper: Reaper, binary: str = "criu", *, output: int | None = None) -> None:
        self.reaper = reaper
        self.binary = binary
        self._output = output

    async def call(
        self,
        type: ReqType,
        opts: rpc_pb2.criu_opts | None = None,
        *,
        features: CriuFeatures | None = None,
        extra_fds: Sequence[int] = (),
        on_notify: NotifyHandler | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        log_path: str | None = None,
    ) -> CriuResponse:
        """Run one request in a fresh ``criu swrk 3`` and return its final answer.

        Args:
            type: the request kind.
            opts: ``criu_opts``; fds in it must stay open in this process during the call.
            features: for FEATURE_CHECK.
            extra_fds: fds criu inherits as 4, 5, ... (for ``inherit_fd``).
            on_notify: handler of NOTIFY packets (default: acknowledge each).
            timeout: seconds for the whole call, criu's exit included.
            log_path: the log CRIU writes for this call, named in errors.
        Returns:
            The successful final answer.
        Raises:
            FailedPrecondition: criu could not be started.
            CriuRequestFailed: CRIU answered ``success=false``.
            CriuExited: criu died before answering, or exited non-zero after answering (except
                after PRE_DUMP, whose worker always exits 1 when no DUMP follows).
            CriuProtocolError: CRIU's answer was malformed.
            TimeoutError: the call took longer than ``timeout``; criu was killed.
            Exception: whatever ``on_notify`` raised (after CRIU aborted the operation).
        """
        payload = encode_request(type, opts, features)
        handler = on_notify or _accept_all
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours:
            try:
                child = spawn(
                    self.reaper,
                    [self.binary, "swrk", str(_SWRK_FD)],
                    stdout=self._output,
                    stderr=self._output,
                    extra_fds=[theirs.fileno(), *extra_fds],
                )
            except OSError as exc:
                raise FailedPrecondition(f"cannot run CRIU ({self.binary}): {exc}") from exc
            finally:
                theirs.close()
            ours.setblocking(False)
            finished = False
            try:
                async with asyncio.timeout(timeout):
                    resp, handler_exc = await _converse(loop, ours, child.exited, payload, handler)
                    ours.close()  # EOF for a worker that would wait for more requests
                    ex = await asyncio.shield(child.exited)
                finished = True
            except TimeoutError:
                raise TimeoutError(
                    f"criu swrk did not finish a {type.name} request within {timeout} s"
                    f" (pid {child.pid}, killed)"
                ) from None
            finally:
                if not finished:
                    await _kill(self.reaper, child.pid, child.exited)
        if handler_exc is not None:  # CRIU has aborted (or died); the handler's error wins
            failure: CriuError | None = CriuExited(type, ex.status, "exited before answering")
            if resp is not None:
                try:
                    check_response(resp, type, log_path=log_path)
                    failure = None
                except CriuError as exc:
                    failure = exc
            raise handler_exc from failure
        if resp is None:
            raise CriuExited(type, ex.status, "exited before answering")
        check_response(resp, type, log_path=log_path)
        if ex.status != 0 and type is not ReqType.PRE_DUMP:
            raise CriuExited(type, ex.status, f"exited with an error after answering {type.name}")
        return resp

    async def version(self, *, timeout: float = DEFAULT_TIMEOUT) -> CriuVersion:
        """Ask CRIU its version (VERSION request, no opts, as runc sends it)."""
        resp = await self.call(ReqType.VERSION, timeout=timeout)
        if resp.version is None:
            raise CriuProtocolError("criu answered VERSION without a version")
        return resp.version

    async def check(self, *, log_dir: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run CRIU's own kernel check (``criu check``) through RPC.

        Args:
            log_dir: directory for ``check.log`` (kept); None = a private directory that is
                removed afterwards.
        Raises:
            CriuRequestFailed: the check failed; the message holds CRIU's logged errors.
        """
        # CHECK answers only success true/false, so the reason comes from the log.
        own_dir = log_dir is None
        directory = _make_private_dir() if log_dir is None else log_dir
        log_path = os.path.join(directory, "check.log")
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                opts = rpc_pb2.criu_opts(images_dir_fd=dir_fd, log_file="check.log", log_level=2)
                try:
                    await self.call(
                        ReqType.CHECK,
                        opts,
                        timeout=timeout,
                        log_path=None if own_dir else log_path,
                    )
                except CriuRequestFailed as exc:
                    detail = log_errors(_read_text(log_path)) or "no error logged"
                    raise CriuRequestFailed(
                        ReqType.CHECK, exc.cr_errno, detail, exc.log_path
                    ) from exc
            finally:
                os.close(dir_fd)
        finally:
            if own_dir:
                _remove_private_dir(directory)

    async def features(
        self,
        mem_track: bool = True,
        lazy_pages: bool = True,
        pidfd_store: bool = False,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CriuFeatures:
        """Ask CRIU which of the named features this kernel offers (FEATURE_CHECK).

        Returns:
            True/False for each feature asked about, None for the others.
        Raises:
            CriuRequestFailed: the check itself failed.
            CriuProtocolError: the answer had no features.
        """
        wanted = CriuFeatures(
            mem_track=mem_track or None,
            lazy_pages=lazy_pages or None,
            pidfd_store=pidfd_store or None,
        )
        # runc sends full opts with FEATURE_CHECK because old CRIU crashed on a request without
        # them; images_dir_fd must then name a directory CRIU can open through /proc/<us>/fd.
        dir_fd = os.open(_tmp_dir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            opts = rpc_pb2.criu_opts(images_dir_fd=dir_fd)
            resp = await self.call(ReqType.FEATURE_CHECK, opts, features=wanted, timeout=timeout)
        finally:
            os.close(dir_fd)
        got = resp.features
        if got is None:
            raise CriuProtocolError("criu answered FEATURE_CHECK without features")
        return CriuFeatures(
            mem_track=bool(got.mem_track) if mem_track else None,
            lazy_pages=bool(got.lazy_pages) if lazy_pages else None,
            pidfd_store=bool(got.pidfd_store) if pidfd_store else None,
        )


async def _converse(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    exited: asyncio.Future[Exit],
    payload: bytes,
    handler: NotifyHandler,
) -> tuple[CriuResponse | None, BaseException | None]:
    """Send the request, answer notifications, return (final answer or None if criu went away,
    the first exception of the handler)."""
    handler_exc: BaseException | None = None
    try:
        await loop.sock_sendall(sock, payload)
    except (BrokenPipeError, ConnectionResetError):
        return None, None
    while True:
        packet = await _recv_packet(loop, sock, exited)
        if packet is None:
            return None, handler_exc
        data, fds = packet
        try:
            resp = decode_response(data)
            if resp.type is not ReqType.NOTIFY:
                if fds:
                    raise CriuProtocolError(f"criu sent {len(fds)} fds with a final answer")
                return resp, handler_exc
            if resp.notify is None:
                raise CriuProtocolError("criu sent a NOTIFY without a notification")
            ok = False
            if handler_exc is None:
                try:
                    result = handler(replace(resp.notify, fds=tuple(fds)))
                    ok = result if isinstance(result, bool) else await result
                except Exception as exc:  # reported after CRIU has cleaned up
                    handler_exc = exc
        finally:
            for fd in fds:
                os.close(fd)
        try:
            await loop.sock_sendall(sock, encode_notify_reply(ok))
        except (BrokenPipeError, ConnectionResetError):
            return None, handler_exc


async def _recv_packet(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, exited: asyncio.Future[Exit]
) -> tuple[bytes, list[int]] | None:
    """Read one packet and its SCM_RIGHTS fds; None at EOF, or when criu has exited and
    nothing is left to read (a forked helper of a killed criu may still hold its socket)."""
    fd = sock.fileno()
    while True:
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                MAX_PACKET, socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            pass
        except ConnectionResetError:
            return None
        else:
            fds = _fds_of(ancdata)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for received in fds:
                    os.close(received)
                raise CriuProtocolError(
                    f"criu sent a packet larger than {MAX_PACKET} bytes or with too many fds"
                )
            if not data:
                for received in fds:
                    os.close(received)
                return None
            return data, fds
        if exited.done():
            return None
        await _readable_or_exited(loop, fd, exited)


async def _readable_or_exited(
    loop: asyncio.AbstractEventLoop, fd: int, exited: asyncio.Future[Exit]
) -> None:
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    loop.add_reader(fd, wake)
    exited.add_done_callback(wake)
    try:
        await woken
    finally:
        loop.remove_reader(fd)
        exited.remove_done_callback(wake)


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


async def _kill(reaper: Reaper, pid: int, exited: asyncio.Future[Exit]) -> None:
    """SIGKILL criu (if still running) and wait briefly for the reaper to see it go."""
    if exited.done():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    try:
        async with asyncio.timeout(_KILL_GRACE):
            await asyncio.shield(exited)
    except TimeoutError:
        reaper.forget(pid)


def _tmp_dir() -> str:
    return os.environ.get("TMPDIR") or "/tmp"


def _make_private_dir() -> str:
    base = _tmp_dir()
    while True:
        path = os.path.join(base, f"pyrunc-criu-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path


def _remove_private_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        for name in os.listdir(path):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, name))
        os.rmdir(path)


def _read_text(path: str, limit: int = 256 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                f.seek(size - limit)
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Capabilities


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a checkpoint or restore needs from CRIU and the host.

    Attributes:
        min_version: go-criu version integer (30000 = 3.0, runc's floor).
        mem_track: dirty memory tracking (pre-dump, ``track_mem`` incremental dumps).
        lazy_pages: lazy pages (userfaultfd, plus a 4 MiB pipe for the page server).
    """

    min_version: int = 30000
    mem_track: bool = False
    lazy_pages: bool = False


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Host settings that decide whether CRIU features work beyond what CRIU reports."""

    pipe_max_size: int
    cap_sys_resource: bool


@dataclass(frozen=True, slots=True)
class CriuCapabilities:
    """What was measured: CRIU's version and kernel features, and the host facts."""

    binary: str
    version: CriuVersion
    features: CriuFeatures
    host: HostFacts


def parse_cap_eff(status_text: str) -> int:
    """Return the ``CapEff`` mask from the text of ``/proc/<pid>/status`` (0 if absent)."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    return 0


def read_host_facts() -> HostFacts:
    """Read ``fs.pipe-max-size`` and whether this process has CAP_SYS_RESOURCE (two small
    /proc reads; not cached, an admin may change the sysctl at any time)."""
    with open("/proc/sys/fs/pipe-max-size") as f:
        pipe_max = int(f.read().strip())
    with open("/proc/self/status") as f:
        cap_eff = parse_cap_eff(f.read())
    return HostFacts(pipe_max_size=pipe_max, cap_sys_resource=bool(cap_eff >> CAP_SYS_RESOURCE & 1))


def unmet_requirements(req: Requirements, caps: CriuCapabilities) -> list[str]:
    """Explain each requirement the measured capabilities do not meet ([] = all met)."""
    problems: list[str] = []
    if caps.version.number < req.min_version:
        problems.append(
            f"CRIU {caps.version} is older than the {format_version(req.min_version)}"
            " this checkpoint needs"
        )
    if req.mem_track and not caps.features.mem_track:
        problems.append(
            "pre-dump needs memory dirty tracking (soft-dirty), which this kernel does not"
            f" offer (CRIU FEATURE_CHECK mem_track={_flag(caps.features.mem_track)})"
        )
    if req.lazy_pages:
        if not caps.features.lazy_pages:
            problems.append(
                "lazy pages need userfaultfd with non-cooperative events, which this kernel"
                f" does not offer (CRIU FEATURE_CHECK lazy_pages={_flag(caps.features.lazy_pages)})"
            )
        host = caps.host
        if not host.cap_sys_resource and host.pipe_max_size < LAZY_PAGES_PIPE_SIZE:
            problems.append(
                f"fs.pipe-max-size is {host.pipe_max_size}; CRIU's lazy page server needs"
                f" {LAZY_PAGES_PIPE_SIZE} without CAP_SYS_RESOURCE:"
                f" sysctl -w fs.pipe-max-size={LAZY_PAGES_PIPE_SIZE}"
            )
    return problems


def _flag(value: bool | None) -> str:
    return "unknown" if value is None else str(value).lower()


@dataclass(frozen=True, slots=True)
class _Probe:
    version: CriuVersion
    features: CriuFeatures


_probe_cache: dict[str, _Probe] = {}


def clear_capability_cache() -> None:
    """Forget what :func:`probe` learnt (tests; or after CRIU was replaced)."""
    _probe_cache.clear()


PROBE_CACHE_DIR = RUN_DIR
"""Where probe results are shared between shims (tmpfs: gone at reboot, like the answers)."""


def _probe_key(binary: str) -> str:
    """What a probe result depends on: the CRIU binary (path, inode, size, mtime), the
    running kernel and this boot."""
    st = os.stat(binary)
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{binary}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{os.uname().release}:{boot}"


def _probe_file(binary: str, cache_dir: str) -> str:
    import hashlib

    return os.path.join(cache_dir, f"criu-{hashlib.sha256(binary.encode()).hexdigest()[:16]}")


def _load_probe(binary: str, cache_dir: str) -> _Probe | None:
    import json

    try:
        with open(_probe_file(binary, cache_dir)) as f:
            doc = json.load(f)
        if doc.get("key") != _probe_key(binary):
            return None
        return _Probe(CriuVersion(**doc["version"]), CriuFeatures(**doc["features"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _store_probe(binary: str, cache_dir: str, found: _Probe) -> None:
    import json

    path = _probe_file(binary, cache_dir)
    tmp = f"{path}.{os.getpid()}"
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        doc = {
            "key": _probe_key(binary),
            "version": asdict(found.version),
            "features": asdict(found.features),
        }
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(doc, f)
        os.rename(tmp, path)


async def probe(
    criu: Criu, *, refresh: bool = False, cache_dir: str | None = None
) -> tuple[CriuVersion, CriuFeatures]:
    """Return CRIU's version and kernel features (mem_track, lazy_pages, pidfd_store).

    CRIU is asked (two ``criu swrk`` runs, tens of milliseconds) once per binary per boot:
    the answer is kept in this process and in ``cache_dir`` (default :data:`PROBE_CACHE_DIR`)
    for the next shims, keyed by the binary's identity, the kernel release and the boot id.
    ``refresh`` asks CRIU again.

    Raises:
        FailedPrecondition: CRIU cannot be run or does not answer VERSION (older than 3.0).
        CriuError: FEATURE_CHECK failed.
    """
    cache_dir = cache_dir or PROBE_CACHE_DIR
    cached = None if refresh else _probe_cache.get(criu.binary)
    if cached is None and not refresh:
        cached = _load_probe(criu.binary, cache_dir)
    if cached is None:
        try:
            version = await criu.version()
        except CriuRequestFailed as exc:
            raise FailedPrecondition(
                f"CRIU ({criu.binary}) does not answer a VERSION request; it is older than 3.0"
                " or broken"
            ) from exc
        features = await criu.features(mem_track=True, lazy_pages=True, pidfd_store=True)
        cached = _Probe(version, features)
        _store_probe(criu.binary, cache_dir, cached)
    _probe_cache[criu.binary] = cached
    return cached.version, cached.features


async def ensure_capable(
    criu: Criu, req: Requirements, *, host: HostFacts | None = None
) -> CriuCapabilities:
    """Check, before a checkpoint touches the container, that CRIU and the host can do it.

    Args:
        criu: the client of the CRIU binary that will run.
        req: what the operation needs.
        host: host facts to use (default: read now from /proc).
    Returns:
        The measured capabilities.
    Raises:
        FailedPrecondition: something is missing; the message names every missing capability.
    """
    version, features = await probe(criu)
    caps = CriuCapabilities(criu.binary, version, features, host or read_host_facts())
    problems = unmet_requirements(req, caps)
    if problems:
        raise FailedPrecondition("; ".join(problems))
    return caps


def criu_binary(path_option: str = "") -> str:
    """Resolve the CRIU executable: ``path_option`` (runc's ``CriuPath``) if set, else ``criu``
    found in PATH.

    Returns:
        An absolute path (or ``path_option`` as given when it contains a slash).
    Raises:
        FailedPrecondition: no executable found.
    """
    name = path_option or "criu"
    if "/" in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise FailedPrecondition(f"CRIU binary {name} does not exist or is not executable")
    search = os.environ.get("PATH") or os.defpath
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise FailedPrecondition(f"CRIU binary {name!r} not found in PATH ({search})")
