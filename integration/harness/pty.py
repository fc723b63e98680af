"""A command run on a pseudo-terminal (``ctr run -t``, ``ctr t attach``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence

from ._common import WaitTimeout


class PtySession:
    """A command running with a new pseudo-terminal as stdin, stdout and stderr.

    The process is in its own session with the pty as controlling terminal. Output is read
    only while :meth:`expect` or :meth:`wait` run, so call one of them regularly.
    """

    def __init__(self, argv: Sequence[str], *, rows: int = 40, cols: int = 120) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_set_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.argv = list(argv)
        self._master: int | None = master
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def output(self) -> str:
        """Everything read so far (decoded, undecodable bytes replaced)."""
        return self._buf.decode(errors="replace")

    def _read(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; False once the terminal hit EOF."""
        if self._master is None or self._eof:
            return False
        ready, _, _ = select.select([self._master], [], [], max(timeout, 0))
        if not ready:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError as exc:  # EIO: every slave fd is closed
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def send(self, text: str) -> None:
        """Type ``text`` into the terminal."""
        assert self._master is not None, "session closed"
        os.write(self._master, text.encode())

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) in output that no earlier ``expect`` consumed.

        Returns:
            The match; output up to its end counts as consumed.

        Raises:
            WaitTimeout: not seen within ``timeout`` (or the terminal closed first).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self._buf.decode(errors="replace")
            m = regex.search(text, self._pos)
            if m:
                self._pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.2)) and self._eof):
                raise WaitTimeout(
                    f"{pattern!r} not seen within {timeout:g}s from {self.argv}; "
                    f"unconsumed output: {text[self._pos :]!r}"
                )

    def wait(self, timeout: float = 30) -> int:
        """Wait for the process to exit, reading its output meanwhile; returns its status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"{self.argv} still running after {timeout:g}s; output: {self.output!r}"
                )
            if not self._read(min(left, 0.1)):
                time.sleep(0.02)
        while self._read(0):  # drain what is left
            pass
        return self.proc.returncode

    def close(self) -> None:
        """SIGKILL the process if it still runs, reap it and close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._master is not None:
            os.close(self._master)
            self._master = None


def _set_controlling_tty() -> None:
    # runs in the child after setsid(): make stdin (the pty slave) the controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
