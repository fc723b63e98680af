"""shim.stdio with real pipes, FIFOs, files, a pty and a logging binary.

ProcessIO is driven as the container drives it: open, hand ``runtime_stdio()`` to the
"process" (here: dups the test keeps, as a runtime's child would inherit them), ``started()``,
then read and write through the process's ends.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import struct
import termios
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

from shim.errors import InvalidArgument
from shim.reaper import Reaper
from shim.spawn import read_all
from shim.stdio import IOConfig, ProcessIO, copy

T = TypeVar("T")

BIG = bytes(range(256)) * 4096  # 1 MiB: many times a pipe's buffer


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


def nb_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


async def write_all(fd: int, data: bytes, *, close: bool = True) -> None:
    """Write ``data`` to a non-blocking fd on the loop; close it afterwards."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
    finally:
        if close:
            os.close(fd)


async def until_buffered(fd: int, n: int) -> None:
    """Poll until ``n`` bytes wait unread in the pipe/FIFO ``fd``."""
    while struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0] < n:
        await asyncio.sleep(0.001)


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


async def start_io(config: IOConfig) -> tuple[ProcessIO, int | None, int | None, int | None]:
    """Open ``config``, keep dups of the process's ends, call ``started()``.

    Returns the io and the process's stdin (read), stdout and stderr (write) fds.
    """
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    io = await ProcessIO.open(config, reaper, container_id="c1", namespace="ns")
    stdio = io.runtime_stdio()
    ends = tuple(
        None if fd is None else os.dup(fd) for fd in (stdio.stdin, stdio.stdout, stdio.stderr)
    )
    await io.started()
    return io, ends[0], ends[1], ends[2]


# -- copy() ----------------------------------------------------------------------------------


def test_copy_moves_large_data_and_returns_at_eof() -> None:
    async def main() -> None:
        src_r, src_w = nb_pipe()
        dst_r, dst_w = nb_pipe()
        reader = asyncio.ensure_future(read_all(dst_r))
        writer = asyncio.ensure_future(write_all(src_w, BIG))
        await copy(src_r, dst_w)  # returns only once the writer closed
        assert writer.done()
        os.close(dst_w)
        assert await reader == BIG
        os.close(src_r)

    run(main())


def test_copy_keeps_draining_when_the_destination_goes_away() -> None:
    async def main() -> None:
        src_r, src_w = nb_pipe()
        dst_r, dst_w = nb_pipe()
        os.close(dst_r)  # EPIPE on every write from now on
        writer = asyncio.ensure_future(write_all(src_w, BIG))
        await copy(src_r, dst_w)
        # The writer was never blocked by the dead destination: all of it was read.
        await writer
        os.close(src_r)
        os.close(dst_w)

    run(main())


def test_copy_wait_first_does_not_take_an_unopened_fifo_for_eof(tmp_path: Path) -> None:
    fifo = tmp_path / "in"
    os.mkfifo(fifo)

    async def main() -> None:
        src = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # no writer yet: read() says EOF
        dst_r, dst_w = nb_pipe()
        task = asyncio.ensure_future(copy(src, dst_w, wait_first=True))
        await asyncio.sleep(0)  # let it start waiting
        assert not task.done()
        w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        await write_all(w, b"late writer")
        await task
        os.close(dst_w)
        assert await read_all(dst_r) == b"late writer"
        os.close(src)

    run(main())


# -- ProcessIO with FIFOs ----------------------------------------------------------------------


def fifos(tmp_path: Path) -> IOConfig:
    for name in ("stdin", "stdout", "stderr"):
        os.mkfifo(tmp_path / name)
    return IOConfig(
        stdin=str(tmp_path / "stdin"),
        stdout=str(tmp_path / "stdout"),
        stderr=str(tmp_path / "stderr"),
    )


def test_fifos_carry_all_three_streams(tmp_path: Path) -> None:
    config = fifos(tmp_path)

    async def main() -> None:
        before = open_fds()
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        # containerd's side: stdin written then closed, outputs read.
        out_reader = os.open(config.stdout, os.O_RDONLY | os.O_NONBLOCK)
        err_reader = os.open(config.stderr, os.O_RDONLY | os.O_NONBLOCK)
        stdin_writer = os.open(config.stdin, os.O_WRONLY | os.O_NONBLOCK)
        got_in = asyncio.ensure_future(read_all(p_in))
        await write_all(stdin_writer, BIG)  # closing it is EOF for the process
        assert await got_in == BIG
        out = asyncio.ensure_future(read_all(out_reader))
        err = asyncio.ensure_future(read_all(err_reader))
        await write_all(p_out, b"to stdout" * 10_000)
        await write_all(p_err, b"to stderr")
        # The copies close the FIFOs when the process's ends close: the readers see EOF.
        assert await out == b"to stdout" * 10_000
        assert await err == b"to stderr"
        await io.wait_output(5)
        io.close()
        assert open_fds() == before  # the installed reaper's wakeup fd is not counted
        await asyncio.sleep(0)

    run(main())


def test_fifo_opens_do_not_block_without_a_peer(tmp_path: Path) -> None:
    """Nobody has opened any FIFO: stdin is opened read-only, outputs O_RDWR; none blocks."""
    config = fifos(tmp_path)

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        # The process writes before anyone reads: kept in the FIFO (O_RDWR holds it open).
        await write_all(p_out, b"early", close=False)
        await until_buffered(io._outputs[0][1], len(b"early"))  # in the FIFO now
        out_reader = os.open(config.stdout, os.O_RDONLY | os.O_NONBLOCK)
        os.close(p_out)
        os.close(p_err)
        await io.wait_output(5)
        assert await read_all(out_reader) == b"early"
        os.close(p_in)
        io.close()

    run(main())


def test_output_fifo_reader_may_go_away_and_come_back(tmp_path: Path) -> None:
    """The output FIFO is held O_RDWR: a reader leaving is no EPIPE for the copy, and what
    the process writes meanwhile waits in the FIFO for the next reader (as in containerd,
    nothing is dropped; a FIFO nobody reads fills up and then holds the process back)."""
    config = fifos(tmp_path)

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        reader = os.open(config.stdout, os.O_RDONLY | os.O_NONBLOCK)
        os.close(reader)  # ctr went away
        await write_all(p_out, b"while nobody listened", close=False)
        await until_buffered(io._outputs[0][1], len(b"while nobody listened"))  # in the FIFO now
        reader = os.open(config.stdout, os.O_RDONLY | os.O_NONBLOCK)  # ctr attached again
        os.close(p_out)
        os.close(p_err)
        await io.wait_output(5)
        assert all(t.done() and t.exception() is None for t in io._output_tasks)
        assert await read_all(reader) == b"while nobody listened"
        os.close(p_in)
        io.close()

    run(main())


def test_file_uris_with_percent_encoded_paths(tmp_path: Path) -> None:
    out = tmp_path / "log dir" / "out put.log"
    err = tmp_path / "log dir" / "err%.log"
    config = IOConfig(stdout="file://" + quote(str(out)), stderr="file://" + quote(str(err)))
    assert "%20" in config.stdout and "%25" in config.stderr

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        await write_all(p_out, b"line 1\n")
        await write_all(p_err, b"oops\n")
        await io.wait_output(5)
        os.close(p_in)
        io.close()

    out.parent.mkdir()
    out.write_bytes(b"line 0\n")  # appended to, not truncated
    run(main())
    assert out.read_bytes() == b"line 0\nline 1\n"
    assert err.read_bytes() == b"oops\n"
    assert stat.S_IMODE(err.stat().st_mode) & 0o644 == 0o644


def test_empty_streams_still_get_pipes() -> None:
    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(IOConfig())
        assert p_in is not None and p_out is not None and p_err is not None
        assert stat.S_ISFIFO(os.fstat(p_in).st_mode)
        assert stat.S_ISFIFO(os.fstat(p_out).st_mode)
        assert await read_all(p_in) == b""  # EOF at once, as /dev/null
        # Outputs are drained: a lot of output never blocks the process.
        await write_all(p_out, BIG)
        await write_all(p_err, BIG)
        await io.wait_output(5)
        assert io._output_tasks and all(t.done() for t in io._output_tasks)
        io.close()

    run(main())


def test_close_stdin_passes_buffered_data_then_eof(tmp_path: Path) -> None:
    config = fifos(tmp_path)

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        writer = os.open(config.stdin, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"buffered")
        # CloseIO before the copy task ever saw the data; the writer stays open.
        await io.close_stdin()
        assert await read_all(p_in) == b"buffered"
        await io.close_stdin()  # a second CloseIO is harmless
        os.close(writer)
        os.close(p_out)
        os.close(p_err)
        io.close()

    run(main())


def test_close_stdin_without_stdin_is_a_no_op() -> None:
    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(IOConfig())
        await io.close_stdin()
        for fd in (p_in, p_out, p_err):
            assert fd is not None
            os.close(fd)
        io.close()

    run(main())


def test_wait_output_is_bounded_while_the_process_holds_its_end(tmp_path: Path) -> None:
    config = fifos(tmp_path)

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await io.wait_output(0.05)  # p_out is still open: no EOF, returns at the timeout
        assert loop.time() - t0 >= 0.05
        assert not any(t.done() for t in io._output_tasks)
        os.close(p_out)
        os.close(p_err)
        await io.wait_output(5)
        assert all(t.done() for t in io._output_tasks)
        os.close(p_in)
        io.close()

    run(main())


def test_close_twice_closes_everything_once(tmp_path: Path) -> None:
    config = fifos(tmp_path)

    async def main() -> None:
        before = open_fds()
        io, p_in, p_out, p_err = await start_io(config)
        for fd in (p_in, p_out, p_err):
            assert fd is not None
            os.close(fd)
        io.close()
        io.close()
        assert open_fds() == before
        assert io._output_tasks == [] and io._stdin_task is None
        await asyncio.sleep(0)  # let the cancelled copies finish

    run(main())


def test_close_while_copying_stops_the_copies(tmp_path: Path) -> None:
    config = fifos(tmp_path)

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        tasks = [*io._output_tasks, io._stdin_task]
        io.close()  # the process still holds its ends: copies are mid-wait
        await asyncio.wait([t for t in tasks if t is not None], timeout=5)
        assert all(t is not None and t.cancelled() for t in tasks)
        for fd in (p_in, p_out, p_err):
            assert fd is not None
            os.close(fd)

    run(main())


@pytest.mark.parametrize("uri", ["tcp://127.0.0.1:1", "http://x/y", "binaryx:///bin/true"])
def test_unsupported_output_uri_is_invalid_argument(uri: str) -> None:
    async def main() -> None:
        before = open_fds()
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        after_install = open_fds()
        with pytest.raises(InvalidArgument, match="unsupported stdio URI"):
            await ProcessIO.open(IOConfig(stdout=uri), reaper, container_id="c", namespace="n")
        assert open_fds() == after_install  # nothing leaked on the way out
        assert before <= after_install

    run(main())


def test_missing_stdin_fifo_raises_and_leaks_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        before = open_fds()
        with pytest.raises(FileNotFoundError):
            await ProcessIO.open(
                IOConfig(stdin=str(tmp_path / "nope")), reaper, container_id="c", namespace="n"
            )
        assert open_fds() == before

    run(main())


# -- binary:// logging -----------------------------------------------------------------------

LOGGER = """#!/bin/sh
out=$(dirname "$0")
printf '%s|%s|%s\\n' "$CONTAINER_ID" "$CONTAINER_NAMESPACE" "$*" > "$out/meta"
exec 5>&-
cat <&3 > "$out/stdout" &
cat <&4 > "$out/stderr"
wait
"""


def test_binary_logger_gets_the_streams_args_and_env(tmp_path: Path) -> None:
    logger = tmp_path / "logger"
    logger.write_text(LOGGER)
    logger.chmod(0o755)
    config = IOConfig(stdout=f"binary://{logger}?flag&key=value", stderr="ignored")

    async def main() -> None:
        io, p_in, p_out, p_err = await start_io(config)
        assert p_in is not None and p_out is not None and p_err is not None
        assert io._logger is not None
        exited = io._logger.exited
        await write_all(p_out, b"out via logger")
        await write_all(p_err, b"err via logger")
        assert (await exited).status == 0
        os.close(p_in)
        io.close()

    run(main())
    assert (tmp_path / "stdout").read_bytes() == b"out via logger"
    assert (tmp_path / "stderr").read_bytes() == b"err via logger"
    container_id, namespace, args = (tmp_path / "meta").read_text().rstrip("\n").split("|")
    assert (container_id, namespace) == ("c1", "ns")
    # containerd passes a query key without a value as a bare argument.
    assert args.split() == ["flag", "key", "value"]


def test_binary_logger_that_never_gets_ready_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shim.stdio

    monkeypatch.setattr(shim.stdio, "_BINARY_READY_TIMEOUT", 0.2)
    logger = tmp_path / "logger"
    logger.write_text("#!/bin/sh\nexec sleep 30\n")
    logger.chmod(0o755)

    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        before = open_fds()
        with pytest.raises(TimeoutError):
            await ProcessIO.open(
                IOConfig(stdout=f"binary://{logger}"), reaper, container_id="c", namespace="n"
            )
        assert open_fds() == before
        # The logger was stopped (SIGTERM), not left behind.
        [exited] = reaper._watchers.values()
        assert (await asyncio.wait_for(exited, 5)).status == 128 + 15

    run(main())


# -- terminal --------------------------------------------------------------------------------


def test_terminal_master_received_and_copied(tmp_path: Path) -> None:
    import socket

    os.mkfifo(tmp_path / "stdin")
    os.mkfifo(tmp_path / "stdout")
    config = IOConfig(stdin=str(tmp_path / "stdin"), stdout=str(tmp_path / "stdout"), terminal=True)

    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        io = await ProcessIO.open(config, reaper, container_id="c", namespace="n")
        path = io.console_socket
        assert path is not None and os.path.exists(path)
        assert io.runtime_stdio().stdin is None  # the runtime gives the process the pty
        # What runc does: make a pty, send the master over the console socket.
        master, slave = os.openpty()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await asyncio.get_running_loop().sock_connect(sock, path)
        socket.send_fds(sock, [b"pty"], [master])
        sock.close()
        os.close(master)
        await io.started()
        assert io.master is not None
        assert not os.path.exists(path)  # the listener and its directory are gone
        io.resize(100, 40)
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        assert (rows, cols) == (40, 100)
        # raw mode on the slave: bytes pass unchanged both ways.
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        out_reader = os.open(config.stdout, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(slave, False)
        await write_all(slave, b"from the process", close=False)
        got = b""
        loop = asyncio.get_running_loop()
        while got != b"from the process":
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(out_reader, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(out_reader)
            got += os.read(out_reader, 100)
        stdin_writer = os.open(config.stdin, os.O_WRONLY | os.O_NONBLOCK)
        await write_all(stdin_writer, b"typed")
        got = b""
        while got != b"typed":
            ready = loop.create_future()
            loop.add_reader(slave, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(slave)
            got += os.read(slave, 100)
        os.close(slave)  # the last slave closes: EIO on the master ends the copy
        await io.wait_output(5)
        assert all(t.done() for t in io._output_tasks)
        assert await read_all(out_reader) == b""  # the FIFO was closed at the end
        io.close()

    run(main())


def test_terminal_console_socket_is_removed_by_close() -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        io = await ProcessIO.open(IOConfig(terminal=True), reaper, container_id="c", namespace="n")
        path = io.console_socket
        assert path is not None
        io.close()
        assert not os.path.exists(os.path.dirname(path))
        assert io.console_socket is None
        io.resize(80, 24)  # no terminal yet: nothing to do

    run(main())


# -- io_uid / io_gid ---------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a pipe to another uid needs root")
def test_owner_gets_the_container_ends_of_the_pipes(tmp_path: Path) -> None:
    """containerd's io_uid/io_gid own the pipes the process gets for stdin, stdout and
    stderr (go-runc NewPipeIO), so a process of that user can reopen them."""

    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        stdin, stdout = str(tmp_path / "in"), str(tmp_path / "out")
        os.mkfifo(stdin)
        os.mkfifo(stdout)
        config = IOConfig(stdin=stdin, stdout=stdout)
        io = await ProcessIO.open(
            config, reaper, container_id="c", namespace="n", owner=(1234, 5678)
        )
        try:
            stdio = io.runtime_stdio()
            for fd in (stdio.stdin, stdio.stdout, stdio.stderr):
                assert fd is not None
                st = os.fstat(fd)
                assert (st.st_uid, st.st_gid) == (1234, 5678)
        finally:
            io.close()

    run(main())
