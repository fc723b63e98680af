"""A process's stdio: pipes to the container, copied to containerd's FIFOs, log files or a
logging binary; or a terminal received through runc's console socket.

Strategy: mirrors containerd ``pkg/process/io.go`` and ``pkg/process/io_util.go``. The
container always gets pipes (or a pty), never containerd's FIFOs themselves: pipes are what CRIU
can dump and re-attach with ``inherit_fd``. Copies run on the event loop with non-blocking fds.
Output FIFOs are opened ``O_RDWR`` so opening never blocks and a reader going away never
raises EPIPE; when a copy reaches EOF it closes its destination, which is how ``ctr`` learns
the output ended. The stdin FIFO is opened read-only and non-blocking: epoll reports it only
once a writer has come, and its EOF (the writer closed) becomes EOF for the process.
Everything owning fds is made by a factory (:meth:`ProcessIO.open`) and closed by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import ParseResult, parse_qs, unquote, urlparse

from shim.errors import InvalidArgument
from shim.reaper import Reaper
from shim.runtime import Stdio
from shim.spawn import Child, spawn

__all__ = ["IOConfig", "ProcessIO"]

_CHUNK = 32 * 1024
_BINARY_READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class IOConfig:
    """What containerd asked for: FIFO paths or log URIs, and whether to use a terminal."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


async def _wait_fd(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not ready.done():
            ready.set_result(None)

    add, remove = (loop.add_writer, loop.remove_writer) if write else (
        loop.add_reader,
        loop.remove_reader,
    )
    add(fd, fire)
    try:
        await ready
    finally:
        remove(fd)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _wait_fd(fd, write=True)


async def copy(src: int, dst: int, *, wait_first: bool = False) -> None:
    """Copy ``src`` to ``dst`` until EOF (or EIO, a closed pty); both must be non-blocking.

    Args:
        wait_first: wait for ``src`` to be readable before the first read; needed for a FIFO
            whose writer may not have opened it yet (reading it then would say EOF).
    """
    if wait_first:
        await _wait_fd(src, write=False)
    while True:
        try:
            data = os.read(src, _CHUNK)
        except BlockingIOError:
            await _wait_fd(src, write=False)
            continue
        except OSError:  # EIO: the pty's last slave closed
            return
        if not data:
            return
        try:
            await _write_all(dst, data)
        except OSError:  # the destination went away for good; drain so the writer never blocks
            continue


def _nonblocking(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd


def _close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


class ProcessIO:
    """The stdio of one container process (init or exec).

    Use :meth:`open` to make one, pass :meth:`runtime_stdio` and :attr:`console_socket` to the
    runtime call, then :meth:`started` once the runtime returned, :meth:`close_stdin` for
    CloseIO, :meth:`resize` for ResizePty and :meth:`close` at delete.
    """

    def __init__(self, config: IOConfig) -> None:
        self.config = config
        self._fds: list[int] = []  # every fd we own, closed by close()
        self._child_ends: list[int] = []  # the container's pipe ends, closed after start
        self._stdio = Stdio()
        self._stdin_src: int | None = None  # containerd's stdin FIFO
        self._stdin_dst: int | None = None  # the pipe (or pty master) the process reads
        self._outputs: list[tuple[int, int]] = []  # (pipe read end, destination)
        self._output_tasks: list[asyncio.Task[None]] = []
        self._stdin_task: asyncio.Task[None] | None = None
        self._logger: Child | None = None
        self._console_dir: str | None = None
        self._console_listener: socket.socket | None = None
        self._console_task: asyncio.Task[int] | None = None
        self.master: int | None = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        config: IOConfig,
        reaper: Reaper,
        *,
        container_id: str,
        namespace: str,
        owner: tuple[int, int] = (0, 0),
    ) -> ProcessIO:
        """Create pipes (or the console socket) and open containerd's side of each stream.

        ``owner`` (uid, gid) owns the stdin pipe and the output
        pipes copied to FIFOs or files, as go-runc's ``NewPipeIO`` (containerd's ``io_uid`` and
        ``io_gid``); a logging binary's pipes and a terminal stay root's, as there.

        Raises:
            InvalidArgument: an unsupported stdio URI.
            OSError: a FIFO or file could not be opened.
        """
        io = cls(config)
        try:
            if config.terminal:
                io._listen_console()
            else:
                await io._open_pipes(reaper, container_id, namespace, owner)
            if config.stdin:
                io._stdin_src = io._own(os.open(config.stdin, os.O_RDONLY | os.O_NONBLOCK))
        except BaseException:
            io.close()
            raise
        return io

    def _own(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._fds += [r, w]
        return r, w

    async def _open_pipes(
        self, reaper: Reaper, container_id: str, namespace: str, owner: tuple[int, int]
    ) -> None:
        """Pipes for all three streams, also those containerd left empty: a stream nobody
        asked for reads EOF / is drained to /dev/null by the shim. The process never holds a
        host file (like /dev/null from the shim's mount namespace), which CRIU could not dump
        from inside the container's."""
        r, w = self._pipe()
        os.fchown(r, *owner)
        stdin: int | None = r
        stdout = stderr = None
        self._child_ends.append(r)
        if self.config.stdin:
            self._stdin_dst = _nonblocking(w)
        else:
            self._release(w)  # EOF at once, as /dev/null would give
        out_uri = urlparse(self.config.stdout) if self.config.stdout else None
        if out_uri is not None and out_uri.scheme == "binary":
            stdout, stderr = await self._start_logger(out_uri, reaper, container_id, namespace)
        else:
            for name, path in (("stdout", self.config.stdout), ("stderr", self.config.stderr)):
                dst = self._own(_nonblocking(_open_destination(path or os.devnull)))
                r, w = self._pipe()
                os.fchown(w, *owner)
                self._outputs.append((_nonblocking(r), dst))
                self._child_ends.append(w)
                if name == "stdout":
                    stdout = w
                else:
                    stderr = w
        self._stdio = Stdio(stdin, stdout, stderr)

    async def _start_logger(
        self, uri: ParseResult, reaper: Reaper, container_id: str, namespace: str
    ) -> tuple[int, int]:
        """Start a ``binary://`` logging program: fd 3 = stdout, 4 = stderr, 5 = ready pipe.

        The program signals readiness by closing (or writing to) fd 5, as containerd's
        ``NewBinaryIO`` expects.
        """
        args: list[str] = []
        for key, values in parse_qs(uri.query, keep_blank_values=True).items():
            for value in values:
                args += [key] if not value else [key, value]
        out_r, out_w = self._pipe()
        err_r, err_w = self._pipe()
        ready_r, ready_w = os.pipe()
        # exactly what containerd's NewBinaryIO gives the program: these two, nothing else
        env = {"CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace}
        try:
            self._logger = spawn(
                reaper, [uri.path, *args], extra_fds=(out_r, err_r, ready_w), env=env
            )
        finally:
            os.close(ready_w)
        try:
            async with asyncio.timeout(_BINARY_READY_TIMEOUT):
                await _wait_fd(_nonblocking(ready_r), write=False)
        finally:
            os.close(ready_r)
        self._child_ends += [out_w, err_w]
        return out_w, err_w

    def _listen_console(self) -> None:
        # A short private directory (socket paths are limited to 107 bytes); not tempfile,
        # which would pull random, shutil, bz2 and lzma into every shim.
        self._console_dir = f"/tmp/pty{os.urandom(6).hex()}"
        os.mkdir(self._console_dir, 0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(self._console_dir, "pty.sock"))
        sock.listen(1)
        sock.setblocking(False)
        self._console_listener = sock
        self._console_task = asyncio.get_running_loop().create_task(self._receive_master(sock))

    @staticmethod
    async def _receive_master(sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(sock)
        with conn:
            while True:
                await _wait_fd(conn.fileno(), write=False)
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
                except BlockingIOError:
                    continue
                if not fds:
                    raise OSError("console socket closed without a terminal")
                return fds[0]

    # -- what the runtime call needs ------------------------------------------------------

    @property
    def console_socket(self) -> str | None:
        if self._console_listener is None:
            return None
        return str(self._console_listener.getsockname())

    def runtime_stdio(self) -> Stdio:
        return self._stdio

    # -- after the runtime call -----------------------------------------------------------

    async def started(self) -> None:
        """The runtime returned: drop the container's ends, receive the pty, start copying."""
        for fd in self._child_ends:
            _close(fd)
            self._fds.remove(fd)
        self._child_ends.clear()
        if self._console_task is not None:
            async with asyncio.timeout(10):
                master = await self._console_task
            self._console_task = None
            self.master = self._own(_nonblocking(master))
            self._close_listener()
            if self.config.stdout:
                dst = self._own(_nonblocking(_open_destination(self.config.stdout)))
                self._outputs.append((self.master, dst))
            self._stdin_dst = self.master
        loop = asyncio.get_running_loop()
        for src, dst in self._outputs:
            self._output_tasks.append(loop.create_task(self._copy_output(src, dst)))
        if self._stdin_src is not None and self._stdin_dst is not None:
            self._stdin_task = loop.create_task(self._copy_stdin(self._stdin_src, self._stdin_dst))

    async def _copy_stdin(self, src: int, dst: int) -> None:
        await copy(src, dst, wait_first=True)
        if dst != self.master:
            self._release(dst)  # EOF for the process
            self._stdin_dst = None

    async def _copy_output(self, src: int, dst: int) -> None:
        await copy(src, dst)
        self._release(dst)  # EOF for the reader (ctr)

    def _release(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            _close(fd)

    async def wait_output(self, timeout: float) -> None:
        """Wait (bounded) until the output copies reached EOF, so nothing written is lost."""
        outputs = [t for t in self._output_tasks if not t.done()]
        if outputs:
            await asyncio.wait(outputs, timeout=timeout)

    async def close_stdin(self) -> None:
        """CloseIO: pass on what containerd already wrote, then give the process EOF."""
        src, dst = self._stdin_src, self._stdin_dst
        if src is None:
            return
        if self._stdin_task is not None:
            self._stdin_task.cancel()
            self._stdin_task = None
        if dst is not None and dst != self.master:
            await _drain(src, dst)
            self._release(dst)
        self._stdin_dst = None
        self._release(src)
        self._stdin_src = None

    def resize(self, width: int, height: int) -> None:
        if self.master is None:
            return
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close(self) -> None:
        """Stop copying and close every fd; stop a logging binary. Safe to call twice."""
        for task in [*self._output_tasks, self._stdin_task]:
            if task is not None:
                task.cancel()
        self._output_tasks.clear()
        self._stdin_task = None
        if self._console_task is not None:
            self._console_task.cancel()
            self._console_task = None
        self._close_listener()
        for fd in self._fds:
            _close(fd)
        self._fds.clear()
        self._outputs.clear()
        if self._logger is not None and not self._logger.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._logger.pid, 15)
        self._logger = None

    def _close_listener(self) -> None:
        if self._console_listener is not None:
            self._console_listener.close()
            self._console_listener = None
        if self._console_dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._console_dir, "pty.sock"))
                os.rmdir(self._console_dir)
            self._console_dir = None


async def _drain(src: int, dst: int) -> None:
    """Move what is buffered in ``src`` to ``dst`` without waiting for more input."""
    while True:
        try:
            data = os.read(src, _CHUNK)
        except OSError:  # BlockingIOError: nothing buffered
            return
        if not data:
            return
        try:
            await _write_all(dst, data)
        except OSError:
            return


def _open_destination(uri: str) -> int:
    """Open where an output stream goes: a FIFO path or ``fifo://``/``file://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "fifo"):
        path = parsed.path if parsed.scheme else uri
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    if parsed.scheme == "file":
        path = unquote(parsed.path)  # containerd's cio percent-encodes the path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    raise InvalidArgument(f"unsupported stdio URI scheme {parsed.scheme!r} in {uri!r}")

