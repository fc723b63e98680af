"""The calls the CRI endpoint makes to containerd: its gRPC API and its CRI, one channel.

Strategy: thin and synchronous (the endpoint serves each call on a worker thread). Every
containerd call carries the namespace header (``containerd-namespace``, "k8s.io" for CRI) and,
inside :meth:`Containerd.lease`, the lease header, so blobs and snapshots made for a checkpoint
are kept from the garbage collector until the lease ends and collected afterwards. Every
``grpc.RpcError`` becomes :class:`~shim.cri._errors.Upstream` (code and message kept). Results
are frozen values; the CRI messages are returned as they came (they go into status.dump).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage

from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shim.api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from shim.api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from shim.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from shim.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from shim.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from shim.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from shim.api.containerd.types import descriptor_pb2
from shim.api.containerd.types.task import task_pb2
from shim.api.k8s.cri.runtime.v1 import api_pb2, api_pb2_grpc

from ._errors import Internal, NotFound, Upstream

__all__ = [
    "LAYER_GZIP",
    "ContainerRecord",
    "Containerd",
    "TaskState",
]

NAMESPACE_HEADER: Final = "containerd-namespace"
LEASE_HEADER: Final = "containerd-lease"
LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
_LEASE_EXPIRY: Final = datetime.timedelta(hours=1)
_SHORT: Final = 30.0  # seconds for calls that only read metadata
_BLOB_CHUNK: Final = 1 << 20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """What a checkpoint needs from containerd's container record."""

    id: str
    runtime: str
    spec: bytes  # the OCI spec as containerd stores it (JSON)
    snapshotter: str
    snapshot_key: str
    image: str


@dataclass(frozen=True, slots=True)
class TaskState:
    """A task's init pid and status name (containerd.v1.types.Status)."""

    pid: int
    status: str


class Containerd:
    """containerd's services on one channel, in one namespace."""

    def __init__(self, channel: grpc.Channel, namespace: str) -> None:
        self.namespace = namespace
        self._containers = containers_pb2_grpc.ContainersStub(channel)
        self._tasks = tasks_pb2_grpc.TasksStub(channel)
        self._snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self._diff = diff_pb2_grpc.DiffStub(channel)
        self._content = content_pb2_grpc.ContentStub(channel)
        self._leases = leases_pb2_grpc.LeasesStub(channel)
        self._images = images_pb2_grpc.ImagesStub(channel)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        self.images = api_pb2_grpc.ImageServiceStub(channel)
        # the lease of the calling thread: the endpoint serves calls on many threads
        self._local = threading.local()
        self._major: int | None = None

    def _md(self) -> tuple[tuple[str, str], ...]:
        lease: str = getattr(self._local, "lease", "")
        if lease:
            return ((NAMESPACE_HEADER, self.namespace), (LEASE_HEADER, lease))
        return ((NAMESPACE_HEADER, self.namespace),)

    def _call(self, what: str, method: Callable[..., T], request: object,
              timeout: float | None = _SHORT) -> T:
        try:
            return method(request, metadata=self._md(), timeout=timeout)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, what) from None

    # CRI (containerd's own) -----------------------------------------------------------------

    def container_status(self, cid: str) -> Any:
        """CRI ContainerStatus (verbose); NotFound passes through as containerd says it."""
        try:
            return self.runtime.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id=cid, verbose=False), timeout=_SHORT)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc) from None

    def major_version(self) -> int:
        """containerd's major version, from its CRI Version answer (cached)."""
        if self._major is None:
            try:
                resp = self.runtime.Version(api_pb2.VersionRequest(version="v1"),
                                            timeout=_SHORT)
            except grpc.RpcError as exc:
                raise Upstream.from_rpc(exc, "CRI Version") from None
            text = str(resp.runtime_version).lstrip("v")
            head = text.split(".", 1)[0]
            self._major = int(head) if head.isdigit() else 1
        return self._major

    def sandbox_of(self, cid: str) -> str:
        """The pod sandbox id of container ``cid`` (CRI ListContainers by id)."""
        try:
            resp = self.runtime.ListContainers(
                api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(id=cid)),
                timeout=_SHORT)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, "listing containers") from None
        for c in resp.containers:
            if c.id == cid:
                return str(c.pod_sandbox_id)
        raise NotFound(f"container {cid!r} not found")

    def pod_status(self, pod_id: str) -> Any:
        """CRI PodSandboxStatus."""
        try:
            return self.runtime.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=_SHORT).status
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, f"pod sandbox {pod_id}") from None

    # containerd's API -----------------------------------------------------------------------

    def container(self, cid: str) -> ContainerRecord:
        """Containers/Get."""
        c = self._call(f"container {cid}", self._containers.Get,
                       containers_pb2.GetContainerRequest(id=cid)).container
        return ContainerRecord(
            id=str(c.id), runtime=str(c.runtime.name), spec=bytes(c.spec.value),
            snapshotter=str(c.snapshotter), snapshot_key=str(c.snapshot_key),
            image=str(c.image),
        )

    def task(self, cid: str) -> TaskState:
        """Tasks/Get of the init process."""
        p = self._call(f"task {cid}", self._tasks.Get,
                       tasks_pb2.GetRequest(container_id=cid)).process
        return TaskState(pid=int(p.pid), status=str(task_pb2.Status.Name(p.status)))

    def checkpoint(self, cid: str, options: AnyMessage, timeout: float | None) -> None:
        """Tasks/Checkpoint with ``options`` (the shim dumps where they say)."""
        self._call(f"checkpointing {cid}", self._tasks.Checkpoint,
                   tasks_pb2.CheckpointTaskRequest(container_id=cid, options=options),
                   timeout=timeout)

    def resume(self, cid: str) -> None:
        """Tasks/Resume."""
        self._call(f"resuming {cid}", self._tasks.Resume,
                   tasks_pb2.ResumeTaskRequest(container_id=cid))

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        """A lease for what this thread makes inside the block, deleted (and collected) at
        its end; it expires by itself after an hour should this process die first."""
        expire = datetime.datetime.now(datetime.UTC) + _LEASE_EXPIRY
        req = leases_pb2.CreateRequest(
            id=f"pyrunc-cri-{uuid.uuid4().hex}",
            labels={"containerd.io/gc.expire": expire.strftime("%Y-%m-%dT%H:%M:%SZ")},
        )
        lease = str(self._call("creating a lease", self._leases.Create, req).lease.id)
        self._local.lease = lease
        try:
            yield lease
        finally:
            self._local.lease = ""
            with contextlib.suppress(Upstream):
                self._call("deleting a lease", self._leases.Delete,
                           leases_pb2.DeleteRequest(id=lease, sync=False))

    def rootfs_diff(self, record: ContainerRecord, out: Path, timeout: float | None) -> None:
        """The container's writable layer against its parent, as containerd's Diff service
        writes it (tar+gzip with whiteouts), into file ``out``. Call inside :meth:`lease`."""
        sn, key = record.snapshotter, record.snapshot_key
        info = self._call(f"snapshot {key}", self._snapshots.Stat,
                          snapshots_pb2.StatSnapshotRequest(snapshotter=sn, key=key)).info
        upper = self._call(f"snapshot {key}", self._snapshots.Mounts,
                           snapshots_pb2.MountsRequest(snapshotter=sn, key=key)).mounts
        view = f"{key}-parent-view-{uuid.uuid4().hex[:12]}"
        lower = self._call(
            f"snapshot {info.parent}", self._snapshots.View,
            snapshots_pb2.ViewSnapshotRequest(snapshotter=sn, key=view, parent=info.parent),
        ).mounts
        try:
            desc = self._call(
                f"diffing {key}", self._diff.Diff,
                diff_pb2.DiffRequest(left=list(lower), right=list(upper), media_type=LAYER_GZIP,
                                     ref=f"pyrunc-checkpoint-rw-{uuid.uuid4().hex}"),
                timeout=timeout,
            ).diff
        finally:
            with contextlib.suppress(Upstream):
                self._call(f"removing {view}", self._snapshots.Remove,
                           snapshots_pb2.RemoveSnapshotRequest(snapshotter=sn, key=view))
        try:
            with open(out, "xb") as f:
                stream = self._content.Read(content_pb2.ReadContentRequest(digest=desc.digest),
                                            metadata=self._md(), timeout=timeout)
                for chunk in stream:
                    f.write(chunk.data)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, f"reading {desc.digest}") from None

    # Restore ----------------------------------------------------------------------------------

    def image_status(self, image: str) -> Any:
        """CRI ImageStatus of ``image`` (the Image message, or None when it is not here)."""
        try:
            resp = self.images.ImageStatus(
                api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)),
                timeout=_SHORT)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, f"image {image}") from None
        return resp.image if resp.HasField("image") and resp.image.id else None

    def pull_image(self, image: str, sandbox_config: Any, timeout: float | None) -> str:
        """CRI PullImage; returns the image reference containerd gives."""
        try:
            resp = self.images.PullImage(
                api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image),
                                         sandbox_config=sandbox_config),
                timeout=timeout)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, f"pulling {image}") from None
        return str(resp.image_ref)

    def create_container(self, request: Any, timeout: float | None) -> str:
        """CRI CreateContainer; returns the new container's id."""
        try:
            return str(self.runtime.CreateContainer(request, timeout=timeout).container_id)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc) from None

    def remove_container(self, cid: str) -> None:
        """CRI RemoveContainer (a container that is gone already is fine)."""
        try:
            self.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid),
                                         timeout=_SHORT * 2)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise Upstream.from_rpc(exc, f"removing container {cid}") from None

    def list_annotations(self) -> list[dict[str, str]]:
        """The annotations of every CRI container."""
        try:
            resp = self.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=_SHORT)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, "listing containers") from None
        return [dict(c.annotations) for c in resp.containers]

    def image_target(self, name: str) -> str:
        """Images/Get: the digest of image ``name``'s target (index or manifest); "" if
        containerd has no image of that name."""
        try:
            image = self._images.Get(images_pb2.GetImageRequest(name=name),
                                     metadata=self._md(), timeout=_SHORT).image
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise Upstream.from_rpc(exc, f"image {name}") from None
        return str(image.target.digest)

    def read_blob(self, digest: str, limit: int) -> bytes:
        """A small blob (an index, a manifest) from the content store, at most ``limit`` bytes.

        Raises:
            Upstream: containerd refused (NotFound: not in the store).
            Internal: the blob is larger than ``limit``.
        """
        data = bytearray()
        try:
            for chunk in self._content.Read(content_pb2.ReadContentRequest(digest=digest),
                                            metadata=self._md(), timeout=_SHORT):
                data += chunk.data
                if len(data) > limit:
                    raise Internal(f"blob {digest} is larger than {limit} bytes")
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, f"reading {digest}") from None
        return bytes(data)

    def save_blob(self, digest: str, out: Path, timeout: float | None) -> None:
        """Blob ``digest`` into a new file ``out`` (mode 0600)."""
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self._content.Read(content_pb2.ReadContentRequest(digest=digest),
                                                metadata=self._md(), timeout=timeout):
                    f.write(chunk.data)
        except grpc.RpcError as exc:
            raise Upstream.from_rpc(exc, f"reading {digest}") from None

    def write_blob(self, path: Path, digest: str, size: int, timeout: float | None,
                   labels: dict[str, str] | None = None) -> None:
        """File ``path`` into the content store as blob ``digest`` (Content/Write: chunks,
        then commit). A blob that is there already is fine. Call inside :meth:`lease`."""
        ref = f"pyrunc-cri-{uuid.uuid4().hex}"

        def requests() -> Iterator[Any]:
            offset = 0
            with open(path, "rb") as f:
                while chunk := f.read(_BLOB_CHUNK):
                    yield content_pb2.WriteContentRequest(
                        action=content_pb2.WRITE, ref=ref, total=size, expected=digest,
                        offset=offset, data=chunk)
                    offset += len(chunk)
            yield content_pb2.WriteContentRequest(action=content_pb2.COMMIT, ref=ref,
                                                  total=size, expected=digest, offset=offset,
                                                  labels=labels or {})

        try:
            for _ in self._content.Write(requests(), metadata=self._md(), timeout=timeout):
                pass
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise Upstream.from_rpc(exc, f"writing {digest}") from None

    def apply_diff(self, record: ContainerRecord, digest: str, size: int, media_type: str,
                   timeout: float | None) -> None:
        """Diff/Apply of layer blob ``digest`` onto the container's snapshot (whiteouts
        remove what they name). Call inside :meth:`lease`."""
        sn, key = record.snapshotter, record.snapshot_key
        mounts = self._call(f"snapshot {key}", self._snapshots.Mounts,
                            snapshots_pb2.MountsRequest(snapshotter=sn, key=key)).mounts
        desc = descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size)
        self._call(f"applying the rootfs diff to {key}", self._diff.Apply,
                   diff_pb2.ApplyRequest(diff=desc, mounts=list(mounts)), timeout=timeout)
