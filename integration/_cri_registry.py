"""A local image registry for the restore tests: Debian's docker-registry on 127.0.0.1.

Strategy: containerd 2.1's own CRI restore always pulls the checkpoint's base image from a
registry (containerd#12876), and this machine reaches no registry: the tests run Debian's
distribution registry (unpacked by hack/install-k8s.sh, no service) on a free port of
127.0.0.1 with its storage in a private directory, push the test image into it with ctr
(plain HTTP), and stop it by pid; :meth:`Registry.stop` removes the directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .harness import HarnessError, free_port, stop_daemon, wait_until

__all__ = ["REGISTRY_BINARY", "Registry"]

REGISTRY_BINARY: Final = Path("/usr/local/bin/docker-registry")  # hack/install-k8s.sh

_CONFIG: Final = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


@dataclass
class Registry:
    """A running registry; ``host`` is ``127.0.0.1:PORT``."""

    dir: Path
    proc: subprocess.Popen[bytes]
    host: str

    @classmethod
    def start(cls) -> Registry:
        """Raises: HarnessError: the binary is missing or it did not answer in 20 s."""
        if not REGISTRY_BINARY.exists():
            raise HarnessError(f"{REGISTRY_BINARY} is missing (run hack/install-k8s.sh)")
        directory = Path(tempfile.mkdtemp(prefix="pyrunc-registry-", dir="/var/tmp"))
        port = free_port()
        (directory / "config.yml").write_text(_CONFIG.format(root=directory / "data", port=port))
        with open(directory / "registry.log", "wb") as log:
            proc = subprocess.Popen([str(REGISTRY_BINARY), "serve", str(directory / "config.yml")],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        reg = cls(directory, proc, f"127.0.0.1:{port}")
        try:
            wait_until(lambda: proc.poll() is not None or _answers(f"http://{reg.host}/v2/"),
                       20, message="the registry to answer")
            if proc.poll() is not None:
                raise HarnessError(f"docker-registry exited with {proc.returncode}")
        except BaseException:
            text = (directory / "registry.log").read_text(errors="replace")[-2000:]
            reg.stop()
            raise HarnessError(f"registry did not start:\n{text}") from None
        return reg

    def stop(self) -> list[str]:
        """Stop it (SIGKILL after 10 s) and remove its directory; returns the problem seen."""
        problems = stop_daemon(self.proc, 10, name="docker-registry")
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems
