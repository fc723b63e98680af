"""CRI CheckpointContainer as kubelet calls it, on every containerd this node runs.

A kubelet stand-in (:mod:`integration._cri_kubelet`) drives CRI against four setups:

* ``ctrd16-endpoint``: containerd 1.6.20 (its CRI has no CheckpointContainer) behind
  ``pyrunc cri serve``, pods on ``io.containerd.pyrunc.v2``;
* ``ctrd17-endpoint``: containerd 1.7.24 (its CRI answers "not implemented"), the same;
* ``ctrd21-endpoint``: containerd 2.1.9 behind ``pyrunc cri serve``, the same pods;
* ``ctrd21-own-pyrunc``: containerd 2.1.9's own CRI, the shim registered as
  config.toml.example says (runtime_type io.containerd.runc.v2 + runtime_path);
* ``ctrd21-own-runc``: containerd 2.1.9's own CRI with io.containerd.runc.v2: the control.

Every pod, container, CNI bridge and containerd instance is removed at the end, also on failure.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from shim.api.k8s.cri.runtime.v1 import api_pb2

from ._cri_containerd import CriContainerd, Version
from ._cri_endpoint import Endpoint
from ._cri_kubelet import Kubelet, Pod, checkpoint_location
from .harness import IMAGE_REF, wait_until

CRIU_UNSUPPORTED = "CRIU binary not found or too old (<31600). Failed to checkpoint container"

# name -> (containerd, through our endpoint?, runtime handler)
SETUPS = {
    "ctrd16-endpoint": (Version.V1_6, True, "pyrunc"),
    "ctrd17-endpoint": (Version.V1_7, True, "pyrunc"),
    "ctrd21-endpoint": (Version.V2_1, True, "pyrunc"),
    "ctrd21-own-pyrunc": (Version.V2_1, False, "pyrunc-rp"),
    "ctrd21-own-runc": (Version.V2_1, False, "runc"),
}
ENDPOINT_SETUPS = [name for name, (_, ep, _) in SETUPS.items() if ep]

# containerd 2.1.9's own archive, listed on this machine (the reference): top-level entries.
ARCHIVE_TOP = {"checkpoint", "config.dump", "container.log", "dump.log", "rootfs-diff.tar",
               "spec.dump", "stats-dump", "status", "status.dump"}
COUNTER_SCRIPT = "echo hi > /new; rm /etc/group; exec counter"


@dataclass
class Node:
    """One setup: a containerd, maybe our endpoint in front, and the stand-in on the CRI."""

    name: str
    containerd: CriContainerd
    endpoint: Endpoint | None
    handler: str
    kubelet: Kubelet
    scratch: Path

    @property
    def ours(self) -> bool:
        """Whether the container runs on our shim."""
        return self.handler != "runc"


@pytest.fixture(scope="module")
def daemons() -> Iterator[dict[Version, CriContainerd]]:
    started: dict[Version, CriContainerd] = {}
    try:
        yield started
    finally:
        problems = [p for d in started.values() for p in d.stop()]
        if problems:
            print("\nCRI containerd teardown:", *problems, sep="\n  ")


@pytest.fixture(scope="module")
def endpoints(daemons: dict[Version, CriContainerd]) -> Iterator[dict[Version, Endpoint]]:
    started: dict[Version, Endpoint] = {}
    try:
        yield started
    finally:
        for ep in started.values():
            ep.stop()


def _node(request: pytest.FixtureRequest, daemons: dict[Version, CriContainerd],
          endpoints: dict[Version, Endpoint], tmp_path: Path) -> Iterator[Node]:
    name: str = request.param
    version, through_endpoint, handler = SETUPS[name]
    if version not in daemons:
        daemons[version] = CriContainerd.start(version)
    daemon = daemons[version]
    endpoint = None
    if through_endpoint:
        if version not in endpoints:
            endpoints[version] = Endpoint.start(daemon.address)
        endpoint = endpoints[version]
    uri = endpoint.uri if endpoint else f"unix://{daemon.address}"
    with Kubelet.connect(uri) as kubelet:
        node = Node(name, daemon, endpoint, handler, kubelet, tmp_path)
        try:
            yield node
        finally:
            problems = kubelet.remove_everything()
            assert not problems, problems


@pytest.fixture(params=list(SETUPS))
def node(request: pytest.FixtureRequest, daemons: dict[Version, CriContainerd],
         endpoints: dict[Version, Endpoint], tmp_path: Path) -> Iterator[Node]:
    yield from _node(request, daemons, endpoints, tmp_path)


@pytest.fixture(params=ENDPOINT_SETUPS)
def ep_node(request: pytest.FixtureRequest, daemons: dict[Version, CriContainerd],
            endpoints: dict[Version, Endpoint], tmp_path: Path) -> Iterator[Node]:
    yield from _node(request, daemons, endpoints, tmp_path)


# --- helpers ---------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^\S+ (stdout|stderr) [FP] (.*)$")


def log_lines(kubelet: Kubelet, cid: str) -> list[str]:
    """The container's output lines from its CRI log file."""
    path = kubelet.container_status(cid).log_path
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [m[2] for line in text.splitlines() if (m := _LOG_LINE.match(line))]


def last_count(kubelet: Kubelet, cid: str) -> int:
    numbers = [int(x) for x in log_lines(kubelet, cid) if x.isdigit()]
    return numbers[-1] if numbers else -1


def assert_counting(kubelet: Kubelet, cid: str) -> None:
    """The counter is running and its count goes up."""
    state = kubelet.container_status(cid).state
    assert state == api_pb2.ContainerState.CONTAINER_RUNNING, state
    before = last_count(kubelet, cid)
    wait_until(lambda: last_count(kubelet, cid) > before + 2, 10,
               message=f"the counter to go on from {before}")


def run_counter(node: Node, pod_name: str, *, host_network: bool,
                annotations: dict[str, str] | None = None) -> tuple[Pod, str]:
    pod = node.kubelet.run_pod(pod_name, host_network=host_network,
                               runtime_handler=node.handler, annotations=annotations)
    cid = node.kubelet.create_container(pod, "counter", IMAGE_REF,
                                        ["/bin/sh", "-c", COUNTER_SCRIPT])
    wait_until(lambda: last_count(node.kubelet, cid) >= 3, 20, message="the counter to count")
    return pod, cid


def rpc_error(fn: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


def checkpointctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["checkpointctl", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def assert_no_file(node: Node, location: Path) -> None:
    assert not location.exists()
    leftovers = [p.name for p in location.parent.iterdir()]
    assert leftovers == [], leftovers
    if node.endpoint is not None:
        assert node.endpoint.staged() == []


# --- the archive -----------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["host", "cni"])
def test_checkpoint_archive(node: Node, network: str) -> None:
    """kubelet's CheckpointContainer: archive 0600 at kubelet's location, containerd 2.x's
    entries exactly named, checkpointctl reads it, the counter keeps counting."""
    pod, cid = run_counter(node, f"counters-{network}", host_network=network == "host")
    sandbox = node.kubelet.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=30).status
    if network == "cni":  # an address from this containerd's own bridge network
        assert sandbox.network.ip.startswith("10."), sandbox.network
    outdir = node.scratch / "checkpoints"
    outdir.mkdir()
    location = checkpoint_location(outdir, pod.name, pod.namespace, "counter")
    node.kubelet.checkpoint(cid, location)

    st = location.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert sorted(p.name for p in outdir.iterdir()) == [location.name]
    with tarfile.open(location) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = set(members)
        assert not [n for n in names if n.startswith(("./", "/"))]
        assert {n.split("/", 1)[0] for n in names} == ARCHIVE_TOP
        assert members["checkpoint"].isdir()
        for entry in ("checkpoint/inventory.img", "checkpoint/descriptors.json",
                      "checkpoint/pstree.img", "spec.dump", "config.dump", "status.dump"):
            assert members[entry].isfile(), entry
        if node.ours:
            assert "checkpoint/pyrunc-checkpoint.json" in names
        diff = tar.extractfile("rootfs-diff.tar")
        assert diff is not None
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(diff.read()))) as layer:
            changed = set(layer.getnames())
        assert "new" in changed and "etc/.wh.group" in changed, changed
    if node.endpoint is not None:
        assert node.endpoint.staged() == []

    show = checkpointctl("show", str(location))
    assert show.returncode == 0, show.stderr
    assert "counter" in show.stdout and IMAGE_REF in show.stdout
    inspect = checkpointctl("inspect", "--stats", "--ps-tree", "--files", str(location))
    assert inspect.returncode == 0, inspect.stderr
    assert "CRIU dump statistics" in inspect.stdout and "counter" in inspect.stdout
    assert_counting(node.kubelet, cid)


def test_checkpoint_memfill_64mib(node: Node) -> None:
    """A 64 MiB container: its pages are all in the archive; it still verifies afterwards."""
    pod = node.kubelet.run_pod("memfill", host_network=True, runtime_handler=node.handler)
    cid = node.kubelet.create_container(pod, "memfill", IMAGE_REF, ["memfill", "64", "7"])
    wait_until(lambda: "filled 64 MiB" in log_lines(node.kubelet, cid), 30,
               message="memfill to fill")
    location = checkpoint_location(node.scratch, pod.name, pod.namespace, "memfill")
    node.kubelet.checkpoint(cid, location)
    with tarfile.open(location) as tar:
        pages = sum(m.size for m in tar.getmembers() if m.name.startswith("checkpoint/pages-"))
    assert pages >= 64 << 20, pages
    node.kubelet.exec_sync(cid, ["kill", "-USR1", "1"])
    wait_until(lambda: "verify ok 64 MiB" in log_lines(node.kubelet, cid), 30,
               message="memfill to verify after the checkpoint")


# --- errors (the endpoint's own) -------------------------------------------------------------


def test_unknown_container_is_not_found(ep_node: Node) -> None:
    location = checkpoint_location(ep_node.scratch, "nopod", "default", "nothing")
    err = rpc_error(ep_node.kubelet.checkpoint, "0123456789abcdef" * 4, location)
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
    assert_no_file(ep_node, location)


def test_bad_location_is_invalid_argument(ep_node: Node) -> None:
    _pod, cid = run_counter(ep_node, "badloc", host_network=True)
    for location in (Path("relative/checkpoint.tar"),
                     ep_node.scratch / "missing-dir" / "checkpoint.tar"):
        err = rpc_error(ep_node.kubelet.checkpoint, cid, location)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert str(location) in err.details()
        assert not location.exists()
    assert list(ep_node.scratch.iterdir()) == []
    assert_counting(ep_node.kubelet, cid)


def test_exited_container_is_failed_precondition(ep_node: Node) -> None:
    pod = ep_node.kubelet.run_pod("exited", host_network=True, runtime_handler=ep_node.handler)
    cid = ep_node.kubelet.create_container(pod, "once", IMAGE_REF, ["true"])
    wait_until(lambda: ep_node.kubelet.container_status(cid).state
               == api_pb2.ContainerState.CONTAINER_EXITED, 20, message="the container to exit")
    location = checkpoint_location(ep_node.scratch, pod.name, pod.namespace, "once")
    err = rpc_error(ep_node.kubelet.checkpoint, cid, location)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "CONTAINER_EXITED" in err.details()
    assert_no_file(ep_node, location)


def test_criu_missing_is_unsupported(ep_node: Node) -> None:
    """With no usable CRIU the endpoint answers kubelet e2e's "unsupported" text."""
    version = SETUPS[ep_node.name][0]
    no_criu = Endpoint.start(ep_node.containerd.address, "--criu", "/nonexistent/criu")
    try:
        pod, cid = run_counter(ep_node, "nocriu", host_network=True)
        location = checkpoint_location(ep_node.scratch, pod.name, pod.namespace, "counter")
        with Kubelet.connect(no_criu.uri) as kubelet:
            err = rpc_error(kubelet.checkpoint, cid, location)
        assert err.code() == grpc.StatusCode.UNKNOWN, err
        assert CRIU_UNSUPPORTED in err.details()
        assert not location.exists()
        assert no_criu.staged() == []
        assert_counting(ep_node.kubelet, cid)
    finally:
        no_criu.stop()
    assert version in SETUPS[ep_node.name]


def test_deadline_aborts_the_dump(ep_node: Node) -> None:
    """The gRPC deadline passes mid-dump: DEADLINE_EXCEEDED, no file, container thawed."""
    pod = ep_node.kubelet.run_pod("deadline", host_network=True,
                                  runtime_handler=ep_node.handler)
    cid = ep_node.kubelet.create_container(pod, "memfill", IMAGE_REF, ["memfill", "512", "3"])
    wait_until(lambda: "filled 512 MiB" in log_lines(ep_node.kubelet, cid), 60,
               message="memfill to fill")
    location = checkpoint_location(ep_node.scratch, pod.name, pod.namespace, "memfill")
    err = rpc_error(ep_node.kubelet.checkpoint, cid, location, deadline=0.4)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    # the endpoint finishes its clean-up after the caller gave up
    wait_until(lambda: ep_node.endpoint is not None and ep_node.endpoint.staged() == [], 30,
               message="the staging directory to go")
    assert_no_file(ep_node, location)
    state = ep_node.kubelet.container_status(cid).state
    assert state == api_pb2.ContainerState.CONTAINER_RUNNING
    ep_node.kubelet.exec_sync(cid, ["kill", "-USR1", "1"])
    wait_until(lambda: "verify ok 512 MiB" in log_lines(ep_node.kubelet, cid), 60,
               message="memfill to answer (running, thawed)")


# --- options from pod annotations ------------------------------------------------------------


def test_tcp_established_by_pod_annotation(ep_node: Node) -> None:
    port = str(20000 + os.getpid() % 10000)
    plain = ep_node.kubelet.run_pod("tcp-plain", host_network=True,
                                    runtime_handler=ep_node.handler)
    cid = ep_node.kubelet.create_container(plain, "tcp", IMAGE_REF, ["opt-tcp", port])
    wait_until(lambda: any("server got" in x for x in log_lines(ep_node.kubelet, cid)), 20,
               message="the TCP pair to talk")
    location = checkpoint_location(ep_node.scratch, plain.name, plain.namespace, "tcp")
    err = rpc_error(ep_node.kubelet.checkpoint, cid, location)
    # the shim names CRIU's reason from its dump log
    assert "Connected TCP socket, consider using --tcp-established" in err.details(), err
    assert_no_file(ep_node, location)
    ep_node.kubelet.remove_pod(plain.id)

    annotated = ep_node.kubelet.run_pod(
        "tcp-annotated", host_network=True, runtime_handler=ep_node.handler,
        annotations={"io.pyrunc.checkpoint.tcp-established": "true"})
    cid = ep_node.kubelet.create_container(annotated, "tcp", IMAGE_REF, ["opt-tcp", port])
    wait_until(lambda: any("server got" in x for x in log_lines(ep_node.kubelet, cid)), 20,
               message="the TCP pair to talk")
    location = checkpoint_location(ep_node.scratch, annotated.name, annotated.namespace, "tcp")
    ep_node.kubelet.checkpoint(cid, location)
    assert stat.S_IMODE(location.stat().st_mode) == 0o600
    show = checkpointctl("inspect", "--ps-tree", str(location))
    assert show.returncode == 0, show.stderr
    before = len(log_lines(ep_node.kubelet, cid))
    wait_until(lambda: len(log_lines(ep_node.kubelet, cid)) > before + 3, 10,
               message="the TCP pair to go on talking")


def test_unknown_annotation_is_invalid_argument(ep_node: Node) -> None:
    pod, cid = run_counter(ep_node, "badann", host_network=True,
                           annotations={"io.pyrunc.checkpoint.no-such-flag": "true"})
    location = checkpoint_location(ep_node.scratch, pod.name, pod.namespace, "counter")
    err = rpc_error(ep_node.kubelet.checkpoint, cid, location)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "no-such-flag" in err.details()
    assert_no_file(ep_node, location)
    assert_counting(ep_node.kubelet, cid)


# --- forwarding ------------------------------------------------------------------------------


def _raw(uri: str, method: str, request: bytes) -> bytes:
    with grpc.insecure_channel(uri) as channel:
        answer: bytes = channel.unary_unary(method)(request, timeout=30)
        return answer


def test_forwarded_byte_for_byte(ep_node: Node) -> None:
    """Version, ListContainers, ContainerStatus, ImageStatus through the endpoint are the very
    bytes containerd's CRI answers."""
    pod, cid = run_counter(ep_node, "forward", host_network=True)
    assert ep_node.endpoint is not None
    direct, ours = f"unix://{ep_node.containerd.address}", ep_node.endpoint.uri
    calls: list[tuple[str, Message]] = [
        ("/runtime.v1.RuntimeService/Version", api_pb2.VersionRequest(version="v1")),
        ("/runtime.v1.RuntimeService/ListContainers",
         api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod.id))),
        ("/runtime.v1.RuntimeService/ContainerStatus",
         api_pb2.ContainerStatusRequest(container_id=cid)),
        ("/runtime.v1.ImageService/ImageStatus",
         api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=IMAGE_REF), verbose=True)),
    ]
    for method, request in calls:
        body = request.SerializeToString()
        # containerd writes map fields (labels, annotations) in Go's random map order, so two
        # direct answers may differ in order (Go map order: about 1 in n per map of n entries);
        # ours must be one of containerd's answers, bytes
        # unchanged, and it must be the same message.
        for _ in range(300):
            got, want = _raw(ours, method, body), _raw(direct, method, body)
            assert len(want) > 0, method
            parsed = type(request).__name__.replace("Request", "Response")
            cls = getattr(api_pb2, parsed)
            assert cls.FromString(got) == cls.FromString(want), method
            if got == want:
                break
        else:
            pytest.fail(f"{method}: no answer through the endpoint was byte-identical to "
                        "containerd's in 300 tries")
    err_direct = rpc_error(_raw, direct, "/runtime.v1.RuntimeService/ContainerStatus",
                           api_pb2.ContainerStatusRequest(container_id="nope").SerializeToString())
    err_ours = rpc_error(_raw, ours, "/runtime.v1.RuntimeService/ContainerStatus",
                         api_pb2.ContainerStatusRequest(container_id="nope").SerializeToString())
    assert (err_ours.code(), err_ours.details()) == (err_direct.code(), err_direct.details())


def test_container_events_stream_forwarded(ep_node: Node) -> None:
    """GetContainerEvents (server streaming) passes through: on containerd 1.7 and 2.x a new
    container's events arrive through the endpoint; containerd 1.6 does not implement it, and
    the endpoint answers the same status and message as containerd."""
    assert ep_node.endpoint is not None

    def open_stream(uri: str, channel: grpc.Channel) -> Iterator[object]:
        return channel.unary_stream(  # type: ignore[no-any-return]
            "/runtime.v1.RuntimeService/GetContainerEvents",
            request_serializer=api_pb2.GetEventsRequest.SerializeToString,
            response_deserializer=api_pb2.ContainerEventResponse.FromString,
        )(api_pb2.GetEventsRequest(), timeout=60)

    if SETUPS[ep_node.name][0] is Version.V1_6:
        errors = []
        for uri in (f"unix://{ep_node.containerd.address}", ep_node.endpoint.uri):
            with grpc.insecure_channel(uri) as channel:
                err = rpc_error(list, open_stream(uri, channel))
                errors.append((err.code(), err.details()))
        assert errors[0] == errors[1]
        assert errors[0][0] == grpc.StatusCode.UNIMPLEMENTED
        return
    with grpc.insecure_channel(ep_node.endpoint.uri) as channel:
        stream = open_stream(ep_node.endpoint.uri, channel)
        try:
            time.sleep(0.5)
            _pod, cid = run_counter(ep_node, "events", host_network=True)
            seen = []
            for event in stream:
                seen.append(event.container_id)  # type: ignore[attr-defined]
                if cid in seen:
                    break
            assert cid in seen
        finally:
            stream.cancel()  # type: ignore[attr-defined]


# --- the format, entry by entry, against containerd 2.1.9's own archive ----------------------


def _archive_of(kubelet: Kubelet, handler: str, outdir: Path) -> Path:
    pod = kubelet.run_pod("format", host_network=True, runtime_handler=handler)
    cid = kubelet.create_container(pod, "counter", IMAGE_REF, ["/bin/sh", "-c", COUNTER_SCRIPT])
    wait_until(lambda: last_count(kubelet, cid) >= 3, 20, message="the counter to count")
    outdir.mkdir()
    location = checkpoint_location(outdir, pod.name, pod.namespace, "counter")
    kubelet.checkpoint(cid, location)
    return location


def _top_level(location: Path) -> dict[str, tuple[str, int, object]]:
    """name -> (type, mode, format) of each top-level entry."""
    out: dict[str, tuple[str, int, object]] = {}
    with tarfile.open(location) as tar:
        for m in tar.getmembers():
            if "/" in m.name:
                continue
            fmt: object = None
            f = tar.extractfile(m) if m.isfile() else None
            data = f.read() if f is not None else b""
            if m.name.endswith(".dump") or m.name == "status":
                fmt = sorted(json.loads(data))  # the JSON document's keys
            elif m.name == "rootfs-diff.tar":
                fmt = data[:2]  # gzip magic
            out[m.name] = ("dir" if m.isdir() else "file", m.mode, fmt)
        assert tar.getmember("checkpoint/descriptors.json").isfile()
    return out


def test_archive_format_matches_containerd_2(ep_node: Node,
                                             daemons: dict[Version, CriContainerd]) -> None:
    """Our endpoint's archive next to containerd 2.1.9's own (runc.v2): the same top-level
    entries with the same types and document keys, and modes no looser than theirs (CRIU's
    files are 0600 here, on purpose: they hold the container's memory and state; containerd's
    are 0644 inside its 0600 archive)."""
    if Version.V2_1 not in daemons:
        daemons[Version.V2_1] = CriContainerd.start(Version.V2_1)
    ours = _top_level(_archive_of(ep_node.kubelet, ep_node.handler, ep_node.scratch / "ours"))
    with Kubelet.connect(f"unix://{daemons[Version.V2_1].address}") as reference:
        try:
            theirs = _top_level(_archive_of(reference, "runc", ep_node.scratch / "theirs"))
        finally:
            assert reference.remove_everything() == []
    assert ours.keys() == theirs.keys()
    for name in sorted(theirs):
        kind, mode, fmt = theirs[name]
        if name == "status.dump":  # fields left out when empty differ with the container
            keys = ours[name][2]
            assert isinstance(keys, list)
            assert {"id", "metadata", "state", "image", "image_ref", "log_path"} <= set(keys)
            assert ours[name][0] == kind
            assert ours[name][1] & ~mode == 0, (name, oct(ours[name][1]), oct(mode))
            continue
        our_kind, our_mode, our_fmt = ours[name]
        assert (our_kind, our_fmt) == (kind, fmt), name
        assert our_mode & ~mode == 0, f"{name}: {oct(our_mode)} is looser than {oct(mode)}"
