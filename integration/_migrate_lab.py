"""Two containerd hosts, an agent on each, a client namespace: the migration tests' world.

Strategy: :func:`two_hosts` builds it and removes it, also on failure. Each host is a
network namespace (``NetLab``) with a bridge of the same name and an address on it
(10.214.<n>.251 and .252), a private containerd started inside it, the test image imported,
and a ``pyrunc agent`` (the command the systemd unit runs) listening there on TCP with
mutual TLS. A veth joins the two bridges (one L2 segment: the container's address reaches
it on whichever host holds it); a third namespace holds the client (.3). Test certificates
(a CA, a server and a client certificate, and a second CA with a client certificate it
signed) are made with the ``openssl`` command line.

``pyrunc migrate`` runs inside the source host's namespace (``nsenter --net``), against the
source's containerd.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._net_lab import NetLab
from .harness import (
    IMAGE_REF,
    NAMESPACE,
    PYRUNC,
    REPO,
    Containerd,
    Containers,
    Ctr,
    TaskStatus,
    ensure_image_tar,
    pyrunc_env,
    wait_until,
)

AGENT_PORT = 7443
_SUBJ = "/CN=pyrunc-test"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def in_netns(netns: str) -> list[str]:
    """The prefix that runs a command in the network namespace at ``netns``."""
    return ["nsenter", f"--net={netns}"]


def pyrunc_cli() -> list[str]:
    """This checkout's ``pyrunc`` command line, run by the test's interpreter."""
    return [sys.executable, "-m", "shim.ctl"]


def make_certs(d: Path, hosts: list[str]) -> None:
    """ca.pem/ca.key, server.pem/.key (SANs: ``hosts``), client.pem/.key signed by the CA;
    bare.pem/.key: a client certificate of the CA that names no address (as a real
    client's); rogue-ca.pem and rogue.pem/.key: a client certificate from another CA."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"{_SUBJ}-{ca}", cwd=d)
    san = ",".join(f"IP:{h}" for h in hosts) + ",DNS:localhost"
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"{_SUBJ}-{name}",
                 cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "bare.key", "-out", "bare.csr", "-subj", f"{_SUBJ}-bare", cwd=d)
    _openssl("x509", "-req", "-in", "bare.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "bare.pem", "-days", "2", cwd=d)


@dataclass
class Host:
    """One side: its namespace, address, containerd, agent."""

    name: str
    netns: str
    ip: str
    containerd: Containerd
    work_dir: Path
    agent: subprocess.Popen[bytes] | None = None
    agent_log: Path = field(default_factory=Path)

    @property
    def ctr(self) -> Ctr:
        return self.containerd.ctr(NAMESPACE)

    @property
    def cgroup_parent(self) -> str:
        return f"/pyrunc-mig-{self.name}-{Path(self.containerd.dir).name[-8:]}"

    def remove_cgroups(self) -> list[str]:
        """rmdir the agent's cgroup parent in every controller (empty once the containers
        are gone)."""
        problems = []
        for controller in Path("/sys/fs/cgroup").iterdir():
            d = controller / self.cgroup_parent.lstrip("/")
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError as exc:
                    problems.append(f"rmdir {d}: {exc}")
        return problems

    @property
    def agent_address(self) -> str:
        return f"{self.ip}:{AGENT_PORT}"

    def start_agent(self, certs: Path) -> None:
        """``pyrunc agent`` in this host's namespace, on TCP with mutual TLS."""
        self.agent_log = self.work_dir.parent / f"agent-{self.name}.log"
        argv = [*in_netns(self.netns), *pyrunc_cli(), "-a", self.containerd.address, "agent",
                "--listen", self.agent_address, "--work-dir", str(self.work_dir),
                "--tls-cert", str(certs / "server.pem"),
                "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem"),
                # two "hosts" on one machine share /run: each needs a runc root of its own
                "--runtime-root", str(self.work_dir.parent / "runc"),
                "--cgroup-parent", self.cgroup_parent]
        with open(self.agent_log, "ab") as log:
            self.agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=REPO, env=pyrunc_env(),
                                          start_new_session=True)
        wait_until(self._listening, 30, interval=0.1, message=f"agent {self.name} to listen")

    def _listening(self) -> bool:
        assert self.agent is not None
        if self.agent.poll() is not None:
            raise AssertionError(f"agent {self.name} exited: {self.agent_log.read_text()}")
        out = subprocess.run(["nsenter", f"--net={self.netns}", "ss", "-Hltn",
                              f"sport = :{AGENT_PORT}"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        return bool(out.strip())

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.kill(self.agent.pid, sig)
            try:
                self.agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.agent.pid, signal.SIGKILL)
                self.agent.wait(timeout=10)
        self.agent = None

    def task_log(self, cid: str) -> str:
        """What the task restored here by the agent wrote (stdout and stderr)."""
        path = self.work_dir / "logs" / f"{cid}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def staged(self) -> list[str]:
        return sorted(p.name for p in self.work_dir.glob("stage-*"))

    def containers(self) -> list[str]:
        return sorted(self.ctr.containers())

    def status(self, cid: str) -> TaskStatus | None:
        t = self.ctr.task(cid)
        return None if t is None else t.status


@dataclass
class World:
    """Hosts a and b, the client namespace, the certificates."""

    lab: NetLab
    a: Host
    b: Host
    client_ns: str
    certs: Path
    subnet: str

    def migrate(self, cid: str, src: Host, dst: Host, *extra: str, method: str = "lazy",
                tls: tuple[str, str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``pyrunc migrate cid --to dst`` run in ``src``'s namespace."""
        return subprocess.run(self._argv(cid, src, dst, method, tls, extra), capture_output=True,
                              text=True, timeout=timeout, check=False, cwd=REPO,
                              env=pyrunc_env(), stdin=subprocess.DEVNULL)

    def _argv(self, cid: str, src: Host, dst: Host, method: str,
              tls: tuple[str, str, str] | None, extra: tuple[str, ...]) -> list[str]:
        cert, key, ca = tls or (str(self.certs / "client.pem"), str(self.certs / "client.key"),
                                str(self.certs / "ca.pem"))
        argv = [*in_netns(src.netns), *pyrunc_cli(), "-a", src.containerd.address, "-n",
                NAMESPACE, "migrate", cid, "--to", dst.agent_address, "--method", method,
                "--json", "--tls-cert", cert,
                "--tls-key", key, "--tls-ca", ca, "--work-dir", str(src.work_dir / "out"),
                *extra]
        return argv

    def migrate_popen(self, cid: str, src: Host, dst: Host, *extra: str,
                      method: str = "lazy") -> subprocess.Popen[str]:
        """:meth:`migrate` in the background (output captured)."""
        argv = self._argv(cid, src, dst, method, None, extra)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO, env=pyrunc_env(), stdin=subprocess.DEVNULL)

    def failure_logs(self) -> str:
        """The CRIU logs the agents kept of failed restores (for assertion messages)."""
        out = []
        for h in (self.a, self.b):
            for f in sorted((h.work_dir / "logs").glob("*-criu-restore-failed.log")):
                lines = f.read_text(errors="replace").splitlines()
                out.append(f"--- {h.name}: {f.name}\n" + "\n".join(lines[-25:]))
        return "\n".join(out)

    def report(self, proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr,
                                      self.failure_logs())
        data: dict[str, object] = json.loads(proc.stdout)
        return data

    def other(self, h: Host) -> Host:
        return self.b if h is self.a else self.a


@contextlib.contextmanager
def two_hosts(tmp: Path, subnet: str = "10.214.1") -> Iterator[World]:
    """The world (see the module docstring); everything removed on exit."""
    lab = NetLab()
    hosts: list[Host] = []
    try:
        br = lab.name("br")
        certs = tmp / "certs"
        make_certs(certs, [f"{subnet}.251", f"{subnet}.252"])
        for n, name in ((251, "a"), (252, "b")):
            ns = lab.netns(f"h{name}")
            lab.bridge(br, netns=ns)
            lab.run(ns, "ip", "addr", "add", f"{subnet}.{n}/24", "dev", br)
            daemon = Containerd.start(netns=ns)
            host = Host(name, ns, f"{subnet}.{n}", daemon, Path(daemon.dir) / "agent")
            hosts.append(host)
            daemon.import_image(ensure_image_tar(), IMAGE_REF, NAMESPACE)
        a, b = hosts
        link = lab.name("lk")
        lab.veth(link, b.netns, link, netns=a.netns, bridge=br)
        lab.run(b.netns, "ip", "link", "set", link, "master", br)
        client_ns = lab.netns("cl")
        lab.veth(lab.name("vc"), client_ns, netns=a.netns, bridge=br, address=f"{subnet}.3/24")
        for h in hosts:
            h.start_agent(certs)
        yield World(lab, a, b, client_ns, certs, subnet)
    finally:
        problems: list[str] = []
        for h in hosts:
            h.stop_agent()
            problems += h.containerd.stop()
            problems += h.remove_cgroups()
        problems += lab.cleanup()
        if problems:
            print("\nmigration world teardown:", *problems, sep="\n  ")


def start_in(world: World, host: Host, name: str, *command: str, wired: bool = False,
             octet: int = 2, veth: str = "vs", extra: tuple[str, ...] = ()
             ) -> tuple[str, Containers]:
    """Run ``command`` in a container on ``host`` (ctr run -d, pyrunc runtime, ``extra``
    flags of ``ctr run``); with ``wired``, give it eth0 = <subnet>.<octet>/24 on the host's
    bridge (host side: the lab's name for ``veth``)."""
    box = Containers(containerd=host.containerd, ctr=host.ctr, runtime=PYRUNC, image=IMAGE_REF,
                     logdir=host.work_dir.parent / "logs")
    started = box.start(name, *command, extra=extra)
    if wired:
        world.lab.veth(world.lab.name(veth), f"/proc/{started.pid}/ns/net", netns=host.netns,
                       bridge=world.lab.name("br"), address=f"{world.subnet}.{octet}/24",
                       gateway=f"{world.subnet}.254")
    return started.id, box


def wait_task(host: Host, cid: str, status: TaskStatus, timeout: float = 60) -> None:
    wait_until(lambda: host.status(cid) is status, timeout, interval=0.1,
               message=lambda: f"{cid} on {host.name} to be {status} (is {host.status(cid)})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

