"""``pyrunc cri serve`` run for a test: started against one containerd, stopped by pid.

Strategy: the endpoint is started the way a node runs it (the ``pyrunc`` console script of the
project venv, as root), with its socket and work dir in a private temporary directory;
:meth:`Endpoint.stop` sends SIGTERM to that pid (SIGKILL after 10 s) and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .harness import HarnessError, stop_daemon, wait_until

__all__ = ["Endpoint"]


@dataclass
class Endpoint:
    """A running ``pyrunc cri serve``."""

    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.dir / "cri.sock"

    @property
    def uri(self) -> str:
        return f"unix://{self.socket}"

    @property
    def work_dir(self) -> Path:
        return self.dir / "work"

    @property
    def log_path(self) -> Path:
        return self.dir / "endpoint.log"

    @classmethod
    def start(cls, containerd_address: str, *extra: str) -> Endpoint:
        """Serve CRI in front of the containerd at ``containerd_address`` (a socket path).

        Raises:
            HarnessError: it did not create its socket within 20 s (log included).
        """
        directory = Path(tempfile.mkdtemp(prefix="pyrunc-cri-ep-", dir="/run"))
        argv = [sys.executable, "-m", "shim.ctl", "cri", "serve", "-v",
                "--listen", f"unix://{directory / 'cri.sock'}",
                "--containerd", f"unix://{containerd_address}",
                "--work-dir", str(directory / "work"), *extra]
        env = dict(os.environ)
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:" + env.get("PATH", "/usr/sbin:/usr/bin")
        with open(directory / "endpoint.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        ep = cls(directory, proc)
        try:
            wait_until(lambda: ep.socket.exists() or proc.poll() is not None, 20,
                       interval=0.05, message="pyrunc cri serve to listen")
            if proc.poll() is not None:
                raise HarnessError(f"pyrunc cri serve exited with {proc.returncode}")
        except BaseException:
            text = ep.log_tail()
            ep.stop()
            raise HarnessError(f"pyrunc cri serve did not start:\n{text}") from None
        return ep

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def staged(self) -> list[str]:
        """What is left in the work dir (nothing, between checkpoints)."""
        try:
            return sorted(os.listdir(self.work_dir))
        except FileNotFoundError:
            return []

    def stop(self) -> list[str]:
        """Stop it (SIGKILL after 10 s) and remove its directory; returns the problem seen."""
        problems = stop_daemon(self.proc, 10, name="pyrunc cri serve")
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems
