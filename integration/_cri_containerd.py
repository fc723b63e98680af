"""A private containerd with its CRI plugin enabled (1.6, 1.7 or 2.1), for the CRI tests.

Strategy: the harness's :class:`~integration.harness.Containerd` disables CRI; this starter
writes a config of its own with CRI on and everything private: root, state, sockets, the CRI
stream server (127.0.0.1, a free port), a runc ``Root``, a CNI configuration whose bridge,
subnet and network name belong to this instance only, and the locally built pause image as the
sandbox image. The test image and the pause image are imported into the ``k8s.io`` namespace.
:meth:`CriContainerd.stop` removes every pod through CRI, then the daemon, stray shims, mounts,
the CNI bridge, host-local's IP reservations and the directory, also after a failure.

Runtime handlers (what a pod's ``runtime_handler`` names):

=============  ===============================================  =====================
handler        containerd 1.6 and 1.7                           containerd 2.1
=============  ===============================================  =====================
``runc``       io.containerd.runc.v2                            io.containerd.runc.v2
``pyrunc``     io.containerd.pyrunc.v2                          io.containerd.pyrunc.v2
``pyrunc-rp``  (none)                                           io.containerd.runc.v2 with
                                                                ``runtime_path`` = our shim
=============  ===============================================  =====================

containerd 1.7 takes the 1.6 configuration. Facts (measured here): containerd 2.1.9 needs
``restrict_oom_score_adj`` (root lacks CAP_SYS_RESOURCE in this VM) and NRI disabled. 1.7 and
2.1 run their own containerd-shim-runc-v2, so their ``usr/bin`` goes first in PATH.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .harness import (
    IMAGE_REF,
    IMAGE_TAR,
    HarnessError,
    containerd_environment,
    ensure_image_tar,
    free_port,
    kill_stray_shims,
    private_config,
    scratch_tmp,
    stop_daemon,
    unmount_all_under,
    wait_for_containerd,
)

__all__ = [
    "CONTAINERD2_PREFIX",
    "K8S_NAMESPACE",
    "PAUSE_REF",
    "PAUSE_TAR",
    "SHIM_PATH",
    "CriContainerd",
    "Version",
    "ensure_pause_tar",
]

REPO: Final = Path(__file__).resolve().parent.parent
K8S_NAMESPACE: Final = "k8s.io"
PAUSE_REF: Final = "localhost/pyrunc-pause:latest"
PAUSE_TAR: Final = REPO / "build" / "pyrunc-pause-image.tar"
PAUSE_BUILD: Final = REPO / "hack" / "image" / "build-pause.sh"
CONTAINERD2_PREFIX: Final = Path("/opt/containerd-shim-pyrunc/containerd-2.1.9")
CONTAINERD17_PREFIX: Final = Path("/opt/containerd-shim-pyrunc/containerd-1.7.24")
SHIM_PATH: Final = "/usr/local/bin/containerd-shim-pyrunc-v2"
CNI_BIN: Final = "/usr/lib/cni"
HOST_LOCAL_STATE: Final = Path("/var/lib/cni/networks")
_instances = 0
_instances_lock = threading.Lock()


class Version(enum.Enum):
    """Which containerd: the system's 1.6.20, the private 1.7.24 or the private 2.1.9."""

    V1_6 = "1.6"
    V1_7 = "1.7"
    V2_1 = "2.1"

    @property
    def prefix(self) -> Path | None:
        """Where hack/install-k8s.sh unpacked it (None: the system's)."""
        return {Version.V1_7: CONTAINERD17_PREFIX, Version.V2_1: CONTAINERD2_PREFIX}.get(self)


def ensure_pause_tar() -> Path:
    """Build the pause image archive (hack/image/build-pause.sh; a no-op when up to date)."""
    subprocess.run(["bash", str(PAUSE_BUILD)], check=True, capture_output=True, timeout=300)
    return PAUSE_TAR


_CONFIG_1_6: Final = """\
version = 2
{common}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "{port}"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc_root}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pyrunc]
      runtime_type = "io.containerd.pyrunc.v2"
      container_annotations = ["io.pyrunc.restore.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""

_CONFIG_2_1: Final = """\
version = 3
disabled_plugins = ["io.containerd.nri.v1.nri"]
{common}
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        Root = "{runc_root}"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.pyrunc]
      runtime_type = "io.containerd.pyrunc.v2"
      container_annotations = ["io.pyrunc.restore.*"]
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.pyrunc-rp]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "{shim}"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.pyrunc-rp.options]
        Root = "{runc_root}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "{port}"
"""

_CNI_CONF: Final = """\
{{
  "cniVersion": "1.0.0",
  "name": "{network}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{subnet}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"""


@dataclass
class CriContainerd:
    """A private CRI-enabled containerd; make one with :meth:`start`, end it with :meth:`stop`."""

    version: Version
    dir: Path
    proc: subprocess.Popen[bytes]
    bridge: str
    network: str

    @property
    def address(self) -> str:
        """containerd's gRPC socket (the CRI services are served there too)."""
        return str(self.dir / "c.sock")

    @property
    def log_path(self) -> Path:
        return self.dir / "containerd.log"

    @property
    def binary(self) -> str:
        prefix = self.version.prefix
        return str(prefix / "usr" / "bin" / "containerd") if prefix else "containerd"

    @property
    def ctr_binary(self) -> str:
        prefix = self.version.prefix
        return str(prefix / "usr" / "bin" / "ctr") if prefix else "ctr"

    @classmethod
    def start(cls, version: Version, *, timeout: float = 60,
              netns: str | None = None) -> CriContainerd:
        """Start one, import the test and pause images into ``k8s.io``; with ``netns`` (a
        network namespace's path) containerd, its shims and its CNI bridge live there.

        Raises:
            HarnessError: a binary is missing or containerd did not come up (log included).
        """
        global _instances
        prefix = version.prefix
        if prefix is not None and not (prefix / "usr/bin/containerd").exists():
            raise HarnessError(f"{prefix} is missing (run hack/install-k8s.sh)")
        if not Path(CNI_BIN, "bridge").exists():
            raise HarnessError(f"CNI plugins missing in {CNI_BIN} (run hack/install-k8s.sh)")
        with _instances_lock:
            _instances += 1
            n = _instances
        directory = Path(tempfile.mkdtemp(prefix="pyrunc-cri-", dir="/run"))
        tag = f"{os.getpid() % 1000}{n}"
        bridge = f"pcri{tag}"[:15]
        network = f"pyrunc-cri-{directory.name}"
        subnet = f"10.{88 + (os.getpid() % 50)}.{n % 250}.0/24"
        cni_conf = directory / "net.d"
        cni_conf.mkdir()
        (cni_conf / "10-pyrunc.conflist").write_text(
            _CNI_CONF.format(network=network, bridge=bridge, subnet=subnet)
        )
        common = private_config(directory)
        template = _CONFIG_2_1 if version is Version.V2_1 else _CONFIG_1_6
        config = directory / "config.toml"
        config.write_text(
            template.format(
                common=common, pause=PAUSE_REF, port=free_port(), runc_root=directory / "runc",
                cni_bin=CNI_BIN, cni_conf=cni_conf, shim=SHIM_PATH,
            )
        )
        # its own containerd-shim-runc-v2 and ctr first
        env = containerd_environment(directory, first=prefix / "usr" / "bin" if prefix else None)
        scratch_tmp(directory).mkdir(mode=0o700)
        binary = str(prefix / "usr" / "bin" / "containerd") if prefix else "containerd"
        with open(directory / "containerd.log", "wb") as log:
            proc = subprocess.Popen(
                [*(["nsenter", f"--net={netns}"] if netns else []), binary, "--config",
                 str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=directory, env=env, start_new_session=True,
            )
        daemon = cls(version=version, dir=directory, proc=proc, bridge=bridge, network=network)
        try:
            daemon._wait_ready(timeout)
            ensure_image_tar()
            ensure_pause_tar()
            daemon.import_image(IMAGE_TAR, IMAGE_REF)
            daemon.import_image(PAUSE_TAR, PAUSE_REF)
        except BaseException:
            tail = daemon.log_tail()
            daemon.stop()
            raise HarnessError(f"CRI containerd {version.value} did not start; log:\n{tail}") \
                from None
        return daemon

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``ctr --address <sock> -n k8s.io ARGS`` (checked)."""
        return subprocess.run(
            [self.ctr_binary, "--address", self.address, "-n", K8S_NAMESPACE, *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=True,
        )

    def import_image(self, tarball: Path, ref: str) -> None:
        self.ctr("images", "import", str(tarball), timeout=300)
        refs = self.ctr("images", "ls", "-q").stdout.split()
        if ref not in refs:
            raise HarnessError(f"importing {tarball} gave {refs}, not {ref}")

    def _wait_ready(self, timeout: float) -> None:
        wait_for_containerd(self.proc, self.address, timeout, ctr=self.ctr_binary)

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _remove_pods(self) -> list[str]:
        # Imported here: grpc is only needed once a daemon runs (start-up time only).
        from ._cri_kubelet import Kubelet

        problems: list[str] = []
        try:
            with Kubelet.connect(f"unix://{self.address}") as kubelet:
                problems += kubelet.remove_everything()
        except Exception as exc:
            problems.append(f"removing pods: {exc!r}")
        return problems

    def stop(self) -> list[str]:
        """Tear everything down (idempotent); returns what could not be cleaned."""
        problems: list[str] = []
        if self.proc.poll() is None:
            problems += self._remove_pods()
        problems += stop_daemon(self.proc)
        problems += kill_stray_shims(self.address)
        stuck = unmount_all_under(self.dir)
        if stuck:
            problems.append(f"could not unmount {stuck}")
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(HOST_LOCAL_STATE / self.network, ignore_errors=True)
        if not stuck:
            shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(scratch_tmp(self.dir), ignore_errors=True)
        return problems
