"""Kubernetes restore through ``pyrunc cri serve``: CreateContainer from a checkpoint.

A kubelet stand-in (:mod:`integration._cri_kubelet`) checkpoints a container of pod A, removes
pod A, and creates the container in pod B with the archive's path (or a checkpoint image) as its
image, then starts it: the shim restores it. Setups: containerd 1.6.20 and 2.1.9, each behind
the endpoint, pods on ``io.containerd.pyrunc.v2``; pods with CNI bridge networking and with
hostNetwork.

Every pod, container, CNI bridge and containerd instance is removed at the end, also on failure.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shim.api.k8s.cri.runtime.v1 import api_pb2

from ._cri_containerd import CriContainerd, Version
from ._cri_endpoint import Endpoint
from ._cri_kubelet import RUNTIME_REQUEST_TIMEOUT, Kubelet, Pod, checkpoint_location
from ._cri_registry import Registry
from .harness import IMAGE_REF, wait_until

SETUPS = {
    "ctrd16-endpoint": Version.V1_6,
    "ctrd21-endpoint": Version.V2_1,
}
COUNTER_SCRIPT = "echo hi > /new; rm /etc/group; exec counter"
HANDLER = "pyrunc"
_LOG_LINE = re.compile(r"^\S+ (stdout|stderr) [FP] (.*)$")


@dataclass
class Node:
    """One containerd behind our endpoint, and the stand-in on the endpoint."""

    name: str
    containerd: CriContainerd
    endpoint: Endpoint
    kubelet: Kubelet
    scratch: Path


@pytest.fixture(scope="module")
def daemons() -> Iterator[dict[Version, tuple[CriContainerd, Endpoint]]]:
    started: dict[Version, tuple[CriContainerd, Endpoint]] = {}
    try:
        yield started
    finally:
        problems: list[str] = []
        for daemon, endpoint in started.values():
            endpoint.stop()
            problems += daemon.stop()
        if problems:
            print("\nCRI containerd teardown:", *problems, sep="\n  ")


def _start(version: Version) -> tuple[CriContainerd, Endpoint]:
    daemon = CriContainerd.start(version)
    try:
        return daemon, Endpoint.start(daemon.address)
    except BaseException:
        daemon.stop()
        raise


@pytest.fixture(params=list(SETUPS))
def node(request: pytest.FixtureRequest,
         daemons: dict[Version, tuple[CriContainerd, Endpoint]],
         tmp_path: Path) -> Iterator[Node]:
    version = SETUPS[request.param]
    if version not in daemons:
        daemons[version] = _start(version)
    daemon, endpoint = daemons[version]
    with Kubelet.connect(endpoint.uri) as kubelet:
        yield Node(request.param, daemon, endpoint, kubelet, tmp_path)
        problems = kubelet.remove_everything()
        assert not problems, problems
        assert_nothing_left(endpoint)


# --- helpers ---------------------------------------------------------------------------------


def assert_nothing_left(endpoint: Endpoint) -> None:
    """No unpacked checkpoint or staging left in the endpoint's work dir."""
    restore = endpoint.work_dir / "restore"
    left = sorted(os.listdir(restore)) if restore.exists() else []
    assert left == [], left
    assert [p for p in endpoint.staged() if p != "restore"] == []


def log_lines(kubelet: Kubelet, cid: str) -> list[str]:
    path = kubelet.container_status(cid).log_path
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [m[2] for line in text.splitlines() if (m := _LOG_LINE.match(line))]


def counts(kubelet: Kubelet, cid: str) -> list[int]:
    return [int(x) for x in log_lines(kubelet, cid) if x.isdigit()]


def last_count(kubelet: Kubelet, cid: str) -> int:
    numbers = counts(kubelet, cid)
    return numbers[-1] if numbers else -1


def create(kubelet: Kubelet, pod: Pod, name: str, image: str, *, attempt: int = 0) -> str:
    """CreateContainer as kubelet sends it for a container whose image is ``image``."""
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
        image=api_pb2.ImageSpec(image=image),
        working_dir="/",
        envs=[api_pb2.KeyValue(key="POD_NAME", value=pod.name.encode())],
        labels={"io.kubernetes.container.name": name, "io.kubernetes.pod.name": pod.name,
                "io.kubernetes.pod.namespace": pod.namespace, "io.kubernetes.pod.uid": pod.uid},
        annotations={"io.kubernetes.container.restartCount": str(attempt),
                     "io.kubernetes.container.hash": "restored-hash",
                     "io.kubernetes.container.terminationMessagePath": ""},
        log_path=f"{name}/{attempt}.log",
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=pod.config.linux.security_context.namespace_options)),
    )
    (pod.log_directory / name).mkdir(parents=True, exist_ok=True)
    resp = kubelet.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=config,
                                       sandbox_config=pod.config),
        timeout=RUNTIME_REQUEST_TIMEOUT)
    pod.containers[name] = str(resp.container_id)
    return str(resp.container_id)


def start(kubelet: Kubelet, cid: str) -> None:
    kubelet.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid),
                                   timeout=RUNTIME_REQUEST_TIMEOUT)


def kill(kubelet: Kubelet, cid: str) -> None:
    """The process is killed (StopContainer with no grace: SIGKILL); its exit is reported."""
    kubelet.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0),
                                  timeout=RUNTIME_REQUEST_TIMEOUT)
    status = kubelet.container_status(cid)
    assert status.state == api_pb2.ContainerState.CONTAINER_EXITED, status
    assert status.exit_code == 137, status


def run_counter(node: Node, pod_name: str, host_network: bool) -> tuple[Pod, str]:
    pod = node.kubelet.run_pod(pod_name, host_network=host_network, runtime_handler=HANDLER)
    cid = node.kubelet.create_container(pod, "counter", IMAGE_REF,
                                        ["/bin/sh", "-c", COUNTER_SCRIPT])
    wait_until(lambda: last_count(node.kubelet, cid) >= 3, 20, message="the counter to count")
    return pod, cid


@dataclass(frozen=True)
class Checkpointed:
    archive: Path
    before: int  # the count before the checkpoint
    after: int  # the count right after it


def checkpoint_counter(node: Node, host_network: bool) -> Checkpointed:
    """Pod A's counter checkpointed; pod A removed."""
    pod, cid = run_counter(node, "counter-a", host_network)
    before = last_count(node.kubelet, cid)
    location = checkpoint_location(node.scratch, pod.name, pod.namespace, "counter")
    node.kubelet.checkpoint(cid, location)
    after = last_count(node.kubelet, cid)
    node.kubelet.remove_pod(pod.id)
    return Checkpointed(location, before, after)


def archived_log_counts(archive: Path) -> int:
    """How many numbers the archive's container.log holds (containerd 2.x's own restore puts
    them back into the new container's log first)."""
    with tarfile.open(archive) as tar:
        try:
            f = tar.extractfile("container.log")
        except KeyError:
            return 0
        text = f.read().decode(errors="replace") if f is not None else ""
    return sum(1 for line in text.splitlines()
               if (m := _LOG_LINE.match(line)) and m[2].isdigit())


def assert_restored_counter(node: Node, cid: str, ck: Checkpointed, *, old_lines: int = 0) -> None:
    """Running, marked restored, counting on from the checkpointed value (after the
    ``old_lines`` numbers of a restored log), rootfs changes kept, ExecSync works."""
    kubelet = node.kubelet
    status = kubelet.container_status(cid)
    assert status.state == api_pb2.ContainerState.CONTAINER_RUNNING, status
    assert status.annotations["restored"] == "true", dict(status.annotations)
    assert status.annotations["checkpointedAt"], dict(status.annotations)
    wait_until(lambda: len(counts(kubelet, cid)) >= old_lines + 3, 20,
               message="the restored counter")
    first = counts(kubelet, cid)[old_lines]
    assert ck.before < first <= ck.after + 2, (ck, counts(kubelet, cid)[:5])
    seen = last_count(kubelet, cid)
    wait_until(lambda: last_count(kubelet, cid) > seen + 2, 10, message="counting on")
    new = kubelet.exec_sync(cid, ["cat", "/new"])
    assert new.exit_code == 0 and new.stdout == b"hi\n", new
    gone = kubelet.exec_sync(cid, ["ls", "/etc/group"])
    assert gone.exit_code != 0, gone


# --- restore from an archive -----------------------------------------------------------------


@pytest.mark.parametrize("network", ["cni", "host"])
def test_restore_counter_from_archive(node: Node, network: str) -> None:
    """Pod B gets pod A's counter back from the archive's path; killed, a new
    CreateContainer from the same image restores it again."""
    host = network == "host"
    ck = checkpoint_counter(node, host)
    pod = node.kubelet.run_pod("counter-b", host_network=host, runtime_handler=HANDLER)
    cid = create(node.kubelet, pod, "counter", str(ck.archive))
    assert node.kubelet.container_status(cid).state == api_pb2.ContainerState.CONTAINER_CREATED
    start(node.kubelet, cid)
    assert_restored_counter(node, cid, ck)
    if not host:  # restored into pod B's own network namespace
        sandbox = node.kubelet.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=30).status
        addr = node.kubelet.exec_sync(cid, ["cat", "/proc/net/fib_trie"])
        assert sandbox.network.ip.encode() in addr.stdout, (sandbox.network.ip, addr)

    kill(node.kubelet, cid)
    again = create(node.kubelet, pod, "counter", str(ck.archive), attempt=1)
    start(node.kubelet, again)
    assert_restored_counter(node, again, ck)
    assert node.kubelet.container_status(again).metadata.attempt == 1


def test_restore_memfill_64mib(node: Node) -> None:
    """64 MiB of memory come back intact: verify ok, no new ``filled`` line."""
    kubelet = node.kubelet
    pod = kubelet.run_pod("memfill-a", host_network=False, runtime_handler=HANDLER)
    cid = kubelet.create_container(pod, "memfill", IMAGE_REF, ["memfill", "64", "7"])
    wait_until(lambda: "filled 64 MiB" in log_lines(kubelet, cid), 30, message="memfill")
    location = checkpoint_location(node.scratch, pod.name, pod.namespace, "memfill")
    kubelet.checkpoint(cid, location)
    kubelet.remove_pod(pod.id)

    pod_b = kubelet.run_pod("memfill-b", host_network=False, runtime_handler=HANDLER)
    restored = create(kubelet, pod_b, "memfill", str(location))
    start(kubelet, restored)
    kubelet.exec_sync(restored, ["kill", "-USR1", "1"])
    wait_until(lambda: "verify ok 64 MiB" in log_lines(kubelet, restored), 30,
               message="the restored memfill to verify")
    assert not [x for x in log_lines(kubelet, restored) if x.startswith("filled")]


def test_not_a_checkpoint_is_forwarded(node: Node) -> None:
    """An ordinary image and a missing path are containerd's business, unchanged."""
    pod = node.kubelet.run_pod("plain", host_network=True, runtime_handler=HANDLER)
    cid = node.kubelet.create_container(pod, "counter", IMAGE_REF, ["counter"])
    status = node.kubelet.container_status(cid)
    assert "restored" not in status.annotations
    with pytest.raises(grpc.RpcError) as info:
        create(node.kubelet, pod, "nothing", str(node.scratch / "missing.tar"))
    assert "missing.tar" in (info.value.details() or "")
    time.sleep(0)


# --- restore from a checkpoint image ---------------------------------------------------------


def build_image(node: Node, archive: Path, ref: str) -> str:
    """``pyrunc checkpoint-image build ARCHIVE REF --import`` into this containerd's
    ``k8s.io``; returns ``REF@DIGEST`` as it prints it."""
    done = subprocess.run(
        [sys.executable, "-m", "shim.ctl", "checkpoint-image", "build", str(archive), ref,
         "--import", "--containerd", f"unix://{node.containerd.address}",
         "--ctr", node.containerd.ctr_binary],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_restore_counter_from_checkpoint_image(node: Node, by: str) -> None:
    """The same from a checkpoint image (tag or digest); the base image is only local."""
    ck = checkpoint_counter(node, host_network=False)
    ref = f"localhost/pyrunc-ck/counter:{by}"
    pinned = build_image(node, ck.archive, ref)
    assert pinned.startswith(f"{ref}@sha256:"), pinned
    ck.archive.unlink()  # the image holds everything
    image = ref if by == "tag" else f"localhost/pyrunc-ck/counter@{pinned.rpartition('@')[2]}"
    try:
        pod = node.kubelet.run_pod("counter-b", host_network=False, runtime_handler=HANDLER)
        cid = create(node.kubelet, pod, "counter", image)
        start(node.kubelet, cid)
        assert_restored_counter(node, cid, ck)
        assert node.kubelet.container_status(cid).annotations["checkpointImage"] == image
        kill(node.kubelet, cid)
        again = create(node.kubelet, pod, "counter", image, attempt=1)
        start(node.kubelet, again)
        assert_restored_counter(node, again, ck)
    finally:
        node.kubelet.remove_everything()
        node.kubelet.images.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
    names = node.containerd.ctr("images", "ls", "-q").stdout
    assert "pyrunc-ck" not in names and pinned.rpartition("@")[2] not in names, names


# --- archives are untrusted input ------------------------------------------------------------


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "",
           data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, data


def _derive(good: Path, out: Path, *, drop: str = "",
            extra: tuple[tuple[tarfile.TarInfo, bytes], ...] = ()) -> Path:
    """The real archive ``good`` less entry ``drop``, plus ``extra`` entries."""
    with tarfile.open(good) as src, tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as dst:
        for m in src:
            if m.name == drop:
                continue
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        for info, data in extra:
            dst.addfile(info, io.BytesIO(data) if data else None)
    return out


def _bad_archives(good: Path, scratch: Path, outside: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, the text the refusal must name)."""
    up = "../" * 12
    made: dict[str, tuple[Path, str]] = {}

    def bad(name: str, named: str, **kw: object) -> None:
        made[name] = (_derive(good, scratch / f"{name}.tar", **kw), named)  # type: ignore[arg-type]

    bad("dotdot", f"checkpoint/{up}{outside.relative_to('/')}/dotdot",
        extra=(_entry(f"checkpoint/{up}{outside.relative_to('/')}/dotdot", data=b"x"),))
    bad("absolute", f"{outside}/absolute", extra=(_entry(f"{outside}/absolute", data=b"x"),))
    bad("symlink-out", "checkpoint/evil",
        extra=(_entry("checkpoint/evil", tarfile.SYMTYPE, str(outside)),
               _entry("checkpoint/evil/through", data=b"x")))
    bad("hardlink-out", "checkpoint/shadow",
        extra=(_entry("checkpoint/shadow", tarfile.LNKTYPE, "/etc/shadow"),))
    bad("device", "checkpoint/null", extra=(_entry("checkpoint/null", tarfile.CHRTYPE),))
    bad("fifo", "checkpoint/fifo", extra=(_entry("checkpoint/fifo", tarfile.FIFOTYPE),))
    bad("unpacking", "pyrunc-unpacking",  # the endpoint's own file, trusted by the restore
        extra=(_entry("pyrunc-unpacking", data=b"complete\n"),))
    bad("no-spec", "spec.dump", drop="spec.dump")
    bad("no-inventory", "checkpoint/inventory.img", drop="checkpoint/inventory.img")
    whole = good.read_bytes()
    (scratch / "truncated.tar").write_bytes(whole[: len(whole) // 2 + 100])
    made["truncated"] = (scratch / "truncated.tar", "truncated.tar")
    (scratch / "corrupt.tar").write_bytes(whole[:512] + b"\xff" * 4096 + whole[4608:])
    made["corrupt"] = (scratch / "corrupt.tar", "corrupt.tar")
    return made


def _snapshots(node: Node) -> list[str]:
    return sorted(node.containerd.ctr("snapshots", "ls").stdout.splitlines()[1:])


def _leases(node: Node) -> list[str]:
    return sorted(node.containerd.ctr("leases", "ls", "-q").stdout.split())


def test_bad_archives_refused_nothing_left(node: Node) -> None:
    """Each bad archive: InvalidArgument naming the entry; no container, snapshot, lease,
    unpacked directory or file outside the scratch directory appears."""
    ck = checkpoint_counter(node, host_network=True)
    outside = Path(tempfile.mkdtemp(prefix="pyrunc-outside-", dir="/var/tmp"))
    try:
        archives = _bad_archives(ck.archive, node.scratch, outside)
        pod = node.kubelet.run_pod("bad", host_network=True, runtime_handler=HANDLER)
        snapshots, leases = _snapshots(node), _leases(node)
        for name, (archive, named) in archives.items():
            with pytest.raises(grpc.RpcError) as info:
                create(node.kubelet, pod, "counter", str(archive))
            err = info.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
            assert named in (err.details() or ""), (name, err.details())
            containers = node.kubelet.runtime.ListContainers(
                api_pb2.ListContainersRequest(), timeout=30).containers
            assert list(containers) == [], name
            assert _snapshots(node) == snapshots, name
            assert _leases(node) == leases, name
            assert os.listdir(outside) == [], name
            assert_nothing_left(node.endpoint)
        assert not Path("/etc/shadow").is_symlink()
        # the good archive still restores in the same pod
        cid = create(node.kubelet, pod, "counter", str(ck.archive))
        start(node.kubelet, cid)
        assert_restored_counter(node, cid, ck)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# --- across nodes ----------------------------------------------------------------------------


@pytest.fixture
def other_node_netns() -> Iterator[str]:
    """A network namespace of its own for the other node (removed afterwards)."""
    name = f"pyrunc-node-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, capture_output=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.mark.parametrize(("source", "target"), [(Version.V1_6, Version.V2_1),
                                                (Version.V2_1, Version.V1_6)],
                         ids=["ctrd16-to-ctrd21", "ctrd21-to-ctrd16"])
def test_restore_on_another_node(daemons: dict[Version, tuple[CriContainerd, Endpoint]],
                                 other_node_netns: str, tmp_path: Path, source: Version,
                                 target: Version) -> None:
    """Checkpointed through one containerd, restored through another with its own root,
    state and network namespace (where its shims and CNI bridge live): the counter goes on in
    the other node's pod network."""
    nodes: list[Node] = []
    if source not in daemons:
        daemons[source] = _start(source)
    other = CriContainerd.start(target, netns=other_node_netns)
    try:
        other_ep = Endpoint.start(other.address)
    except BaseException:
        other.stop()
        raise
    with Kubelet.connect(daemons[source][1].uri) as a, Kubelet.connect(other_ep.uri) as b:
        node_a = Node("a", *daemons[source], a, tmp_path)
        node_b = Node("b", other, other_ep, b, tmp_path)
        nodes = [node_a, node_b]
        try:
            ck = checkpoint_counter(node_a, host_network=False)
            pod = b.run_pod("counter-b", host_network=False, runtime_handler=HANDLER)
            cid = create(b, pod, "counter", str(ck.archive))
            start(b, cid)
            assert_restored_counter(node_b, cid, ck)
            sandbox = b.runtime.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=30).status
            addr = b.exec_sync(cid, ["cat", "/proc/net/fib_trie"])
            assert sandbox.network.ip.encode() in addr.stdout, (sandbox.network.ip, addr)
            assert node_a.containerd.dir != node_b.containerd.dir
            # the other containerd (nsenter execs it: same pid) is in its own namespace
            theirs = os.readlink(f"/proc/{other.proc.pid}/ns/net")
            assert theirs == f"net:[{os.stat(other_node_netns).st_ino}]", theirs
            assert theirs != os.readlink("/proc/self/ns/net")
        finally:
            try:
                for n in nodes:
                    problems = n.kubelet.remove_everything()
                    assert not problems, problems
                    assert_nothing_left(n.endpoint)
            finally:
                other_ep.stop()
                problems = other.stop()
                assert not [p for p in problems if "ip link" not in p], problems


# --- containerd 2.1.9's own CRI restore, the shim registered per config.toml.example ---------


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    reg = Registry.start()
    try:
        yield reg
    finally:
        reg.stop()


def _drop_names(daemon: CriContainerd, host: str) -> None:
    """Remove every image name of the registry ``host`` (tag and digest names)."""
    for name in daemon.ctr("images", "ls", "-q").stdout.split():
        if name.startswith(f"{host}/"):
            daemon.ctr("images", "rm", name)


@pytest.mark.parametrize("network", ["cni", "host"])
def test_containerd21_own_restore(daemons: dict[Version, tuple[CriContainerd, Endpoint]],
                                  registry: Registry, tmp_path: Path, network: str) -> None:
    """Without our endpoint: containerd 2.1.9's CRI restores a checkpoint of a container on our
    shim (runtime ``pyrunc-rp``: io.containerd.runc.v2 + runtime_path), the base image served
    by a local registry (2.1 always pulls it); also into a CNI pod."""
    if Version.V2_1 not in daemons:
        daemons[Version.V2_1] = _start(Version.V2_1)
    daemon = daemons[Version.V2_1][0]
    image = f"{registry.host}/pyrunc-test:latest"
    try:
        daemon.ctr("images", "tag", IMAGE_REF, image)
        daemon.ctr("images", "push", "--plain-http", image)
        daemon.ctr("images", "rm", image)
        host = network == "host"
        with Kubelet.connect(f"unix://{daemon.address}") as kubelet:
            try:
                # pulled, as a node gets it (its image_ref, config.dump's rootfsImageRef, is
                # then a repo digest: 2.1.9 cannot pull an image id, containerd#14096)
                kubelet.images.PullImage(
                    api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=120)
                pod = kubelet.run_pod("own-a", host_network=host, runtime_handler="pyrunc-rp")
                cid = kubelet.create_container(pod, "counter", image,
                                               ["/bin/sh", "-c", COUNTER_SCRIPT])
                wait_until(lambda: last_count(kubelet, cid) >= 3, 20, message="counting")
                before = last_count(kubelet, cid)
                location = checkpoint_location(tmp_path, pod.name, pod.namespace, "counter")
                kubelet.checkpoint(cid, location)
                after = last_count(kubelet, cid)
                kubelet.remove_pod(pod.id)
                # only this name (CRI RemoveImage would drop every name of the image id,
                # the test image's too); 2.1 pulls the base image from the registry anyway
                daemon.ctr("images", "rm", image)

                pod_b = kubelet.run_pod("own-b", host_network=host, runtime_handler="pyrunc-rp")
                restored = create(kubelet, pod_b, "counter", str(location))
                start(kubelet, restored)
                node = Node("own", daemon, daemons[Version.V2_1][1], kubelet, tmp_path)
                ck = Checkpointed(location, before, after)
                assert_restored_counter(node, restored, ck,
                                        old_lines=archived_log_counts(location))
                kill(kubelet, restored)  # kubelet's restart: the same image again
                again = create(kubelet, pod_b, "counter", str(location), attempt=1)
                start(kubelet, again)
                assert_restored_counter(node, again, ck,
                                        old_lines=archived_log_counts(location))
            finally:
                problems = kubelet.remove_everything()
                assert not problems, problems
    finally:
        _drop_names(daemon, registry.host)


def test_containerd21_own_restore_memfill(
        daemons: dict[Version, tuple[CriContainerd, Endpoint]], registry: Registry,
        tmp_path: Path) -> None:
    """containerd 2.1.9's own restore of 64 MiB on the shim: verify ok, no new ``filled``."""
    if Version.V2_1 not in daemons:
        daemons[Version.V2_1] = _start(Version.V2_1)
    daemon = daemons[Version.V2_1][0]
    image = f"{registry.host}/pyrunc-test:latest"
    try:
        daemon.ctr("images", "tag", IMAGE_REF, image)
        daemon.ctr("images", "push", "--plain-http", image)
        daemon.ctr("images", "rm", image)
        with Kubelet.connect(f"unix://{daemon.address}") as kubelet:
            try:
                kubelet.images.PullImage(
                    api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=120)
                pod = kubelet.run_pod("own-m", host_network=False, runtime_handler="pyrunc-rp")
                cid = kubelet.create_container(pod, "memfill", image, ["memfill", "64", "7"])
                wait_until(lambda: "filled 64 MiB" in log_lines(kubelet, cid), 30,
                           message="memfill")
                location = checkpoint_location(tmp_path, pod.name, pod.namespace, "memfill")
                kubelet.checkpoint(cid, location)
                kubelet.remove_pod(pod.id)
                pod_b = kubelet.run_pod("own-m2", host_network=False,
                                        runtime_handler="pyrunc-rp")
                restored = create(kubelet, pod_b, "memfill", str(location))
                start(kubelet, restored)
                old = len(log_lines(kubelet, restored))  # 2.x puts the old log back first
                kubelet.exec_sync(restored, ["kill", "-USR1", "1"])
                wait_until(lambda: "verify ok 64 MiB" in log_lines(kubelet, restored)[old:], 30,
                           message="the restored memfill to verify")
                assert not [x for x in log_lines(kubelet, restored)[old:]
                            if x.startswith("filled")]
            finally:
                problems = kubelet.remove_everything()
                assert not problems, problems
    finally:
        _drop_names(daemon, registry.host)
