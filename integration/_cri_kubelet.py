"""A kubelet stand-in: drives a CRI endpoint over gRPC the way kubelet does.

Strategy: no kubelet runs on this machine (no Debian suite ships one), so the tests call CRI
as kubelet's remote runtime client does: the same requests, fields and ordering for a pod
(RunPodSandbox with kubelet's metadata, log directory, DNS, namespace options; CreateContainer
with ``<name>/<attempt>.log``; StartContainer), kubelet's checkpoint location
``checkpoint-<pod>_<namespace>-<container>-<RFC3339>.tar`` and its timeout rule (the request
carries ``timeout`` of at least the runtime request timeout, 2 minutes, and that is the gRPC
deadline), and StopPodSandbox before RemovePodSandbox. :meth:`Kubelet.remove_everything` is
the teardown: every pod sandbox and container the endpoint lists is stopped and removed.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from shim.api.k8s.cri.runtime.v1 import api_pb2, api_pb2_grpc

__all__ = [
    "RUNTIME_REQUEST_TIMEOUT",
    "Kubelet",
    "Pod",
    "checkpoint_location",
]

RUNTIME_REQUEST_TIMEOUT: Final = 120.0  # kubelet's --runtime-request-timeout default
POD_LOG_ROOT: Final = Path("/var/log/pods")


def checkpoint_location(directory: Path, pod: str, namespace: str, container: str,
                        now: datetime.datetime | None = None) -> Path:
    """kubelet's archive path: ``checkpoint-<pod>_<ns>-<container>-<RFC3339>.tar``."""
    stamp = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    text = stamp.isoformat().replace("+00:00", "Z")
    return directory / f"checkpoint-{pod}_{namespace}-{container}-{text}.tar"


@dataclass
class Pod:
    """A pod sandbox the stand-in ran."""

    id: str
    name: str
    namespace: str
    uid: str
    config: Any  # api_pb2.PodSandboxConfig
    log_directory: Path
    containers: dict[str, str] = field(default_factory=dict)  # name -> id


class Kubelet:
    """CRI RuntimeService and ImageService on one channel."""

    def __init__(self, channel: grpc.Channel, endpoint: str) -> None:
        self.channel = channel
        self.endpoint = endpoint
        self.runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        self.images = api_pb2_grpc.ImageServiceStub(channel)
        self._log_dirs: dict[str, Path] = {}

    @classmethod
    @contextlib.contextmanager
    def connect(cls, endpoint: str) -> Iterator[Kubelet]:
        """A stand-in on ``endpoint`` (``unix:///path``); the channel closes on exit."""
        channel = grpc.insecure_channel(endpoint)
        try:
            yield cls(channel, endpoint)
        finally:
            channel.close()

    # Pods -----------------------------------------------------------------------------------

    def run_pod(self, name: str, *, host_network: bool, runtime_handler: str,
                namespace: str = "default", annotations: dict[str, str] | None = None) -> Pod:
        """RunPodSandbox as kubelet sends it for a pod with one container."""
        uid = str(uuid.uuid4())
        log_dir = POD_LOG_ROOT / f"{namespace}_{name}_{uid}"
        log_dir.mkdir(parents=True, exist_ok=True)
        node = api_pb2.NamespaceMode.NODE
        pod = api_pb2.NamespaceMode.POD
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace,
                                                attempt=0),
            hostname="" if host_network else name,
            log_directory=str(log_dir),
            dns_config=api_pb2.DNSConfig(servers=["127.0.0.1"], searches=["cluster.local"],
                                         options=["ndots:5"]),
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid},
            annotations=dict(annotations or {}),
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(
                        network=node if host_network else pod,
                        pid=api_pb2.NamespaceMode.CONTAINER,
                        ipc=pod,
                    ),
                ),
            ),
        )
        try:
            resp = self.runtime.RunPodSandbox(
                api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler),
                timeout=RUNTIME_REQUEST_TIMEOUT * 2,
            )
        except BaseException:
            shutil.rmtree(log_dir, ignore_errors=True)
            raise
        self._log_dirs[str(resp.pod_sandbox_id)] = log_dir
        return Pod(id=resp.pod_sandbox_id, name=name, namespace=namespace, uid=uid,
                   config=config, log_directory=log_dir)

    def create_container(self, pod: Pod, name: str, image: str, command: Sequence[str],
                         *, attempt: int = 0) -> str:
        """CreateContainer + StartContainer; returns the container id."""
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
            image=api_pb2.ImageSpec(image=image),
            command=list(command),
            working_dir="/",
            envs=[api_pb2.KeyValue(key="POD_NAME", value=pod.name.encode())],
            labels={"io.kubernetes.container.name": name, "io.kubernetes.pod.name": pod.name,
                    "io.kubernetes.pod.namespace": pod.namespace,
                    "io.kubernetes.pod.uid": pod.uid},
            annotations={"io.kubernetes.container.restartCount": str(attempt),
                         "io.kubernetes.container.terminationMessagePath": ""},
            log_path=f"{name}/{attempt}.log",
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=pod.config.linux.security_context.namespace_options,
                ),
            ),
        )
        (pod.log_directory / name).mkdir(parents=True, exist_ok=True)
        resp = self.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=config,
                                           sandbox_config=pod.config),
            timeout=RUNTIME_REQUEST_TIMEOUT,
        )
        cid = str(resp.container_id)
        pod.containers[name] = cid
        self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid),
                                    timeout=RUNTIME_REQUEST_TIMEOUT)
        return cid

    def container_status(self, cid: str) -> Any:
        return self.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid, verbose=False),
            timeout=RUNTIME_REQUEST_TIMEOUT,
        ).status

    def exec_sync(self, cid: str, cmd: Sequence[str], timeout: int = 10) -> Any:
        return self.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout),
            timeout=RUNTIME_REQUEST_TIMEOUT,
        )

    def checkpoint(self, cid: str, location: Path, *, timeout: int = 0,
                   deadline: float | None = None) -> None:
        """CheckpointContainer as kubelet calls it: ``timeout`` (seconds) below the runtime
        request timeout becomes that timeout; it is also the gRPC deadline (``deadline``
        overrides the deadline only, to test what happens when it passes)."""
        seconds = max(timeout, int(RUNTIME_REQUEST_TIMEOUT))
        self.runtime.CheckpointContainer(
            api_pb2.CheckpointContainerRequest(container_id=cid, location=str(location),
                                               timeout=seconds),
            timeout=deadline if deadline is not None else float(seconds),
        )

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=RUNTIME_REQUEST_TIMEOUT)

    def remove_pod(self, pod_id: str) -> None:
        """StopPodSandbox, RemovePodSandbox, then the pod's log directory (kubelet's job)."""
        self.stop_pod(pod_id)
        self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=RUNTIME_REQUEST_TIMEOUT)
        log_dir = self._log_dirs.pop(pod_id, None)
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)

    def remove_everything(self) -> list[str]:
        """Stop and remove every container and pod sandbox; returns what failed."""
        problems: list[str] = []
        containers = self.runtime.ListContainers(api_pb2.ListContainersRequest(),
                                                 timeout=30).containers
        for c in containers:
            try:
                self.runtime.StopContainer(
                    api_pb2.StopContainerRequest(container_id=c.id, timeout=0), timeout=60)
                self.runtime.RemoveContainer(
                    api_pb2.RemoveContainerRequest(container_id=c.id), timeout=60)
            except grpc.RpcError as exc:
                problems.append(f"container {c.id}: {exc.code()} {exc.details()}")
        pods = self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
        for p in pods:
            try:
                self.remove_pod(p.id)
            except grpc.RpcError as exc:
                problems.append(f"pod {p.id}: {exc.code()} {exc.details()}")
            meta = p.metadata
            shutil.rmtree(POD_LOG_ROOT / f"{meta.namespace}_{meta.name}_{meta.uid}",
                          ignore_errors=True)
        for log_dir in self._log_dirs.values():  # pods removed by containerd behind our back
            shutil.rmtree(log_dir, ignore_errors=True)
        self._log_dirs.clear()
        return problems
