"""An async client of CRIU's RPC: one ``criu swrk 3`` per call.

Strategy: mirrors runc ``criuSwrk``. A socketpair whose other end is criu's fd 3, one request,
then response packets until a non-NOTIFY one (each NOTIFY is handed to a callback and answered
with ``notify_success``), then the exit through the one reaper (:mod:`shim.reaper`; nothing
here waits for a pid). Socket reads are non-blocking on the event loop (``recvmsg`` from an
``add_reader`` callback). Every call has a timeout; on timeout, cancellation or a broken
conversation criu is SIGKILLed and its exit awaited.

Fds named in ``criu_opts`` (``images_dir_fd``, ``work_dir_fd``, ``status_fd``) are resolved by
CRIU as ``/proc/<our pid>/fd/<n>``: keep them open in this process for the whole call. Fds that
CRIU must *inherit* (``inherit_fd``) go in ``extra_fds`` and are criu's 4, 5, ... (3 is the
RPC socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence

from shim.api.criu import rpc_pb2
from shim.checkpoint.criu._codec import (
    MAX_PACKET,
    CriuError,
    CriuExited,
    CriuFeatures,
    CriuProtocolError,
    CriuResponse,
    CriuVersion,
    Notification,
    ReqType,
    check_response,
    decode_response,
    encode_notify_reply,
    encode_request,
)
from shim.errors import FailedPrecondition
from shim.reaper import Exit, Reaper
from shim.spawn import spawn

__all__ = [
    "DEFAULT_TIMEOUT",
    "Criu",
    "NotifyHandler",
]


DEFAULT_TIMEOUT = 60.0
"""Seconds a call may take unless the caller says otherwise (dumps of big containers need more)."""

_KILL_GRACE = 5.0  # seconds to wait for a SIGKILLed criu to be reaped
_SWRK_FD = 3  # criu's end of the socketpair, inside criu


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
        resp = decode_response(packet)
        if resp.type is not ReqType.NOTIFY:
            return resp, handler_exc
        if resp.notify is None:
            raise CriuProtocolError("criu sent a NOTIFY without a notification")
        ok = False
        if handler_exc is None:
            try:
                result = handler(resp.notify)
                ok = result if isinstance(result, bool) else await result
            except Exception as exc:  # reported after CRIU has cleaned up
                handler_exc = exc
        try:
            await loop.sock_sendall(sock, encode_notify_reply(ok))
        except (BrokenPipeError, ConnectionResetError):
            return None, handler_exc


async def _recv_packet(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, exited: asyncio.Future[Exit]
) -> bytes | None:
    """Read one packet; None at EOF, or when criu has exited and nothing is left to read (a
    forked helper of a killed criu may still hold its socket). Descriptors sent with it are
    not received (no room for them: the kernel drops them)."""
    fd = sock.fileno()
    while True:
        try:
            data, _ancdata, flags, _ = sock.recvmsg(MAX_PACKET)
        except (BlockingIOError, InterruptedError):
            pass
        except ConnectionResetError:
            return None
        else:
            if flags & socket.MSG_TRUNC:
                raise CriuProtocolError(f"criu sent a packet larger than {MAX_PACKET} bytes")
            return data or None
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
