"""CRIU's RPC messages (``criu swrk``), sans-IO: requests to packet bytes, packet bytes to
responses, and the typed errors of a conversation.

Strategy: mirrors go-criu ``main.go`` and runc ``libcontainer/container_linux.go``
(``criuSwrk``). One ``criu_req``/``criu_resp`` per SOCK_SEQPACKET packet, no length prefix
(CRIU's ``criu/cr-service.c``). :class:`CriuVersion` carries go-criu's version integer. No I/O.
"""

from __future__ import annotations

import enum
import errno
import signal
from dataclasses import dataclass

from google.protobuf.message import DecodeError, EncodeError

from shim.api.criu import rpc_pb2
from shim.errors import Internal, InvalidArgument

__all__ = [
    "MAX_PACKET",
    "CriuError",
    "CriuExited",
    "CriuFeatures",
    "CriuProtocolError",
    "CriuRequestFailed",
    "CriuResponse",
    "CriuVersion",
    "Notification",
    "ReqType",
    "check_response",
    "decode_response",
    "encode_notify_reply",
    "encode_request",
    "format_version",
]


MAX_PACKET = 64 * 1024
"""Largest response packet accepted (runc reads 40 KiB); a longer one is a protocol error."""


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

    ``pid`` is 0 unless CRIU sent one (``setup-namespaces``, ``post-restore``). Descriptors CRIU
    attaches to a notification (``orphan-pts-master``'s pty master) are not received: the
    shim never asks for a restore through RPC (runc does), so the kernel drops them.
    """

    script: str
    pid: int = 0


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
    notify = version = features = None
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
