"""``pyrunc agent``: receives migrations and restores them through the local containerd.

Strategy: a synchronous grpcio server (a thread per call; nothing here runs on an asyncio
loop). One :class:`_Receive` per Migrate stream owns everything that stream creates on this
host - the staging directory, an imported image, the snapshot, the container record, the
task - and :meth:`_Receive.rollback` removes all of it. The rule: until the source says
Commit, the destination is provisional; a stream that fails or ends without Commit is rolled
back, so a failed migration leaves nothing here. Prepare (before the source freezes) makes
the snapshot, record and task and writes down what it made (:data:`OWNED`), so that an agent
killed before Commit rolls it back when it starts again. After Commit the container stays; the
staging directory goes once the restore's ``criu lazy-pages`` has ended (post-copy reads
the page map from it). Stale staging directories (an agent killed mid-transfer) are removed
when the agent starts.

Errors map to a gRPC status in one place, :func:`status_of`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf import any_pb2

from shim.api.containerd.runc.options import oci_pb2
from shim.api.containerd.services.containers.v1 import containers_pb2
from shim.api.pyrunc.migrate.v1 import agent_pb2, agent_pb2_grpc
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint.network import cut_off
from shim.typeurl import pack, unpack

from ._checks import cpuinfo_check, host_facts
from ._containerd import Containerd, connect, ctr
from ._errors import ContainerdError, MigrateError, Refused, TransferFailed
from ._stats import RestoreStats, StatsError, parse_stats
from ._tls import TlsFiles, criu_tls_args, is_unix, server_credentials
from ._transfer import TarSink, upper_dir

__all__ = ["PROVISIONAL", "STAGE_PREFIX", "AgentConfig", "lazy_daemons", "serve", "stages_of",
           "status_of"]

log = logging.getLogger("pyrunc.agent")

STAGE_PREFIX: Final = "stage-"
RESTORE_STATS: Final = "stats-restore"
OWNED: Final = "owned.json"  # what a migration not yet committed made in containerd
PROVISIONAL: Final = "PROVISIONAL"  # Status of a container whose migration is not committed
NETWORK_RECORD: Final = "pyrunc-network.json"  # shim.checkpoint.network.SNAPSHOT
PAGE_SERVER_LOG: Final = "page-server.log"
_RECEIVED_EVERY: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``pyrunc agent`` settings."""

    listen: tuple[str, ...]
    containerd: str
    work_dir: Path
    criu: str = "criu"
    tls: TlsFiles | None = None
    insecure_tcp: bool = False
    runtime_root: str = ""  # this host's runc root, when not the one the source used
    cgroup_parent: str = ""  # re-parent restored containers' cgroups here


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an error of a call (the one mapping)."""
    if isinstance(exc, Refused):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, ContainerdError):
        code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
        return code, str(exc)
    if isinstance(exc, MigrateError):
        return grpc.StatusCode.ABORTED, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def lazy_daemons(images_dir: str) -> list[int]:
    """Pids of ``criu lazy-pages`` processes serving from ``images_dir``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"lazy-pages" in argv and images_dir.encode() in argv:
            found.append(int(name))
    return found


def _runtime_options(given: Any | None, root: str) -> Any | None:
    """The container's runtime options for this host: as the source had them, with this
    host's runc root when the agent has one configured."""
    if not root:
        return given
    options = (unpack(given, oci_pb2.Options) if given is not None else None) or oci_pb2.Options()
    options.root = root
    return pack(options)


def _spec(given: Any, parent: str) -> Any:
    """The container's spec for this host: as the source had it, with its cgroup moved under
    ``parent`` when the agent has one configured (a systemd-style path is left alone)."""
    if not parent:
        return given
    spec = json.loads(given.value)
    linux = spec.setdefault("linux", {})
    path = str(linux.get("cgroupsPath", ""))
    if ":" not in path:
        name = path.rstrip("/").rsplit("/", 1)[-1] or "container"
        linux["cgroupsPath"] = f"{parent.rstrip('/')}/{name}"
    return any_pb2.Any(type_url=given.type_url, value=json.dumps(spec).encode())


_CRIU_LOG = re.compile(r"CRIU log kept at (/[^\s;)]+)")


def _keep_criu_log(message: str, log_dir: Path, cid: str) -> str:
    """Copy the CRIU log a shim error names out of the bundle the rollback removes."""
    m = _CRIU_LOG.search(message)
    if m is None:
        return ""
    target = log_dir / f"{cid}-criu-restore-failed.log"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(m[1], target)
    except OSError:
        return ""
    return str(target)


def _read_status(fd: int, timeout: float) -> bool:
    """CRIU's status fd: a NUL once ready; EOF (it exited) or the timeout = not ready."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready) and os.read(fd, 1) == b"\0"


def _unpack(tar: Path, directory: str) -> None:
    sink = TarSink(directory)
    with open(tar, "rb") as f:
        while data := f.read(1 << 20):
            sink.write(data)
    sink.close()


def _keep_only(top: str, kept: dict[str, list[str]]) -> None:
    """In each directory ``kept`` names (relative to ``top``), remove the entries it does
    not list (what the source removed after its first diff).

    Raises:
        MigrateError: a name that leads out of ``top``.
    """
    real_top = os.path.realpath(top)
    for rel, names in kept.items():
        d = os.path.realpath(os.path.join(top, rel))
        if os.path.isabs(rel) or (d != real_top and not d.startswith(real_top + "/")):
            raise MigrateError(f"rootfs changes name {rel!r}, outside the rootfs")
        if not os.path.isdir(d) or os.path.islink(os.path.join(top, rel)):
            continue
        keep = set(names)
        for entry in os.scandir(d):
            if entry.name in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _read_restore_stats(work: Path) -> RestoreStats:
    try:
        _, restore = parse_stats((work / RESTORE_STATS).read_bytes())
    except (OSError, StatsError):
        return RestoreStats()
    return restore or RestoreStats()


class _Receive:
    """One incoming migration and everything it made on this host."""

    def __init__(self, cfg: AgentConfig, begin: Any) -> None:
        self.cfg = cfg
        self.begin = begin
        self.cid = str(begin.container_id)
        self.stage = cfg.work_dir / f"{STAGE_PREFIX}{self.cid}-{uuid.uuid4().hex[:8]}"
        self.images = self.stage / "images"
        self.work = self.stage / "work"
        self.image_tar = self.stage / "image.tar"
        self.rootfs_tar = self.stage / "rootfs.tar"
        self.redo_tar = self.stage / "rootfs-redo.tar"
        self.keep_json = self.stage / "rootfs-keep.json"
        self.imported = False
        self.snapshot = False
        self.container = False
        self.task = False
        self.prepared = False
        self.task_created = False
        self.early_network: bytes | None = None
        self.mounts: list[Any] = []
        self.runtime_options: Any | None = None
        self.page_server: subprocess.Popen[bytes] | None = None
        for d in (self.images, self.work):
            d.mkdir(parents=True, mode=0o700)
        self._criu = TarSink(str(self.images))
        self._files: dict[int, Any] = {}

    def take(self, chunk: Any) -> None:
        if chunk.part == agent_pb2.CRIU_IMAGES:
            self._criu.write(chunk.data)
            return
        path = {agent_pb2.IMAGE: self.image_tar, agent_pb2.ROOTFS_DIFF: self.rootfs_tar,
                agent_pb2.ROOTFS_REDO: self.redo_tar, agent_pb2.ROOTFS_KEEP: self.keep_json,
                agent_pb2.NETWORK: self.images / NETWORK_RECORD}.get(chunk.part)
        if path is None:
            raise MigrateError(f"unknown part {chunk.part}")
        if self.prepared and chunk.part not in (agent_pb2.ROOTFS_REDO, agent_pb2.ROOTFS_KEEP):
            raise MigrateError(f"part {agent_pb2.Part.Name(chunk.part)} after Prepare")
        f = self._files.get(chunk.part)
        if f is None:
            f = self._files[chunk.part] = open(path, "wb")  # noqa: SIM115 (closed later)
        f.write(chunk.data)

    def _close(self, part: int) -> None:
        f = self._files.pop(part, None)
        if f is not None:
            f.close()

    def prepare(self, page_server_host: str, create_task: bool = False) -> agent_pb2.Prepared:
        """What does not depend on the source's frozen state: image, snapshot, rootfs diff,
        container record; with ``page_server_host``, a ``criu page-server`` there writing
        into the staging images. Raises on any failure (the caller rolls back)."""
        self._close(agent_pb2.IMAGE)
        self._close(agent_pb2.ROOTFS_DIFF)
        self._close(agent_pb2.NETWORK)
        b = self.begin
        if b.page_server_tls and self.cfg.tls is None:
            raise Refused("the source asks for TLS on CRIU's page server, and this agent has "
                          "no certificates (--tls-cert, --tls-key, --tls-ca)")
        phases: dict[str, int] = {}
        mark = time.monotonic()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases[name] = int((now - mark) * 1e6)
            mark = now

        with connect(self.cfg.containerd, b.namespace) as cd:
            if cd.has_container(self.cid):
                raise Refused(f"container {self.cid} already exists on this host")
            self._own()
            if self.image_tar.exists():
                with open(self.image_tar, "rb") as f:
                    proc = ctr(cd.address, b.namespace, "images", "import", "-", stdin=f)
                if proc.returncode != 0:
                    raise TransferFailed("importing the image failed: "
                                         f"{proc.stderr.decode(errors='replace').strip()}")
                self.imported = True
                self._own()
                lap("image-import")
            try:
                self.mounts = cd.prepare(b.snapshotter, b.snapshot_key, b.parent_snapshot)
            except ContainerdError as exc:
                raise TransferFailed(f"preparing the rootfs on {b.parent_snapshot} failed "
                                     f"({exc}); is the image {b.image} there?") from None
            self.snapshot = True
            if self.rootfs_tar.exists():
                _unpack(self.rootfs_tar, upper_dir(self.mounts))
            lap("rootfs")
            record = containers_pb2.Container(
                id=self.cid, labels=dict(b.labels), image=b.image,
                spec=_spec(b.spec, self.cfg.cgroup_parent),
                snapshotter=b.snapshotter, snapshot_key=b.snapshot_key,
                runtime=containers_pb2.Container.Runtime(name=b.runtime))
            self.runtime_options = _runtime_options(
                b.runtime_options if b.HasField("runtime_options") else None,
                self.cfg.runtime_root)
            if self.runtime_options is not None:
                record.runtime.options.CopyFrom(self.runtime_options)
            cd.create_container(record)
            self.container = True
            lap("container-record")
            if create_task:
                self.early_network = self._network_record()
                self._create_task(cd)
                lap("task-create")
        address = ""
        if page_server_host:
            address = self._start_page_server(page_server_host)
            lap("page-server")
        self.prepared = True
        return agent_pb2.Prepared(page_server=address, phases_us=phases)

    def _criu_tls(self) -> list[str]:
        """CRIU's TLS options for this migration's page-server connection, with this agent's
        certificate ([] when the source did not ask for TLS). The peer's name is not checked:
        as a server (``criu page-server``) CRIU would check its own listening address in the
        source's certificate, and as a client (``criu lazy-pages``) the source's address,
        which a client certificate names no more; the CA's signature is checked both ways."""
        if not self.begin.page_server_tls or self.cfg.tls is None:
            return []
        return criu_tls_args(self.cfg.tls, verify_name=False)

    def _start_page_server(self, host: str) -> str:
        """``criu page-server`` on ``host`` writing into the staging images (over TLS when
        the source asked for it); returns its ``host:port`` once it listens (CRIU's status
        fd)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        read_end, write_end = os.pipe()
        try:
            self.page_server = subprocess.Popen(
                [self.cfg.criu, "page-server", "--images-dir", str(self.images),
                 "--address", host, "--port", str(port), "--status-fd", str(write_end),
                 "-o", str(self.work / PAGE_SERVER_LOG), "-v2", *self._criu_tls()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=[write_end])
        finally:
            os.close(write_end)
        try:
            ready = _read_status(read_end, timeout=30)
        finally:
            os.close(read_end)
        if not ready:
            raise TransferFailed(f"criu page-server on {host}:{port} did not start: "
                                 f"{self._page_server_log()}")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _page_server_log(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.work / PAGE_SERVER_LOG).read_text(errors="replace").splitlines()
            return "; ".join(line for line in lines if "Error" in line)[-500:] or "no error logged"
        return "no log"

    def _page_server_done(self) -> None:
        """The dump's pages are all here: the page server ended its session well."""
        if self.page_server is None:
            return
        try:
            status = self.page_server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise TransferFailed("criu page-server did not end after the dump") from None
        if status != 0:
            raise TransferFailed(f"criu page-server failed ({status}): "
                                 f"{self._page_server_log()}")

    def _network_record(self) -> bytes | None:
        """The network record as received, marked moving: the source holds its addresses
        until it is frozen, so the rebuild announces them instead of asking who holds them
        (:attr:`shim.checkpoint.network.NetworkSnapshot.moving`)."""
        from shim.checkpoint.network import as_moving

        with contextlib.suppress(FileNotFoundError):
            return as_moving((self.images / NETWORK_RECORD).read_bytes())
        return None

    def _create_task(self, cd: Containerd) -> None:
        """Create the task that restores from the staging images at Start (the shim reads
        only the network record at Create)."""
        b = self.begin
        if (network := self._network_record()) is not None:
            (self.images / NETWORK_RECORD).write_bytes(network)  # what the shim reads
        lazy = b.method == agent_pb2.LAZY
        options = checkpoint_pb2.RestoreOptions(
            image_path=str(self.images), work_path=str(self.work), lazy_pages=lazy,
            page_server=b.page_server if lazy else "")
        if self.runtime_options is not None:
            options.runtime_options.CopyFrom(self.runtime_options)
        if lazy and b.page_server_tls and self.cfg.tls is not None:
            # the restore's `criu lazy-pages` fetches the pages over TLS (the shim passes
            # these on as its options), the peer's name not checked (see _criu_tls)
            files = self.cfg.tls.absolute()
            options.tls_cacert, options.tls_cert, options.tls_key = files.ca, files.cert, files.key
            options.tls_no_cn_verify = True
        log_dir = self.cfg.work_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        out = f"file://{log_dir / (self.cid + '.log')}"
        self.task = True
        cd.create_task(self.cid, self.mounts, out, out, pack(options))
        self.task_created = True

    def restore(self) -> agent_pb2.Restored:
        """Everything arrived: the rootfs again when it changed, the task. Raises on any
        failure (the caller rolls back)."""
        start = time.monotonic()
        if not self.prepared:  # a source that sent no Prepare
            self.prepare("")
        phases: dict[str, int] = {}
        mark = time.monotonic()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases[name] = int((now - mark) * 1e6)
            mark = now

        self._criu.close()
        self._page_server_done()
        lap("images")
        if agent_pb2.ROOTFS_KEEP in self._files:
            self._close(agent_pb2.ROOTFS_KEEP)
            upper = upper_dir(self.mounts)
            _keep_only(upper, json.loads(self.keep_json.read_bytes() or b"{}"))
            if agent_pb2.ROOTFS_REDO in self._files:
                self._close(agent_pb2.ROOTFS_REDO)
                _unpack(self.redo_tar, upper)
            lap("rootfs-changes")
        with connect(self.cfg.containerd, self.begin.namespace) as cd:
            if self.task_created and self._network_record() != self.early_network:
                # the network changed between the early record and the dump: the task
                # created on the early one would rebuild the old network
                log.info("%s: the network changed before the freeze; creating the task again",
                         self.cid)
                cd.remove_task(self.cid)
                self.task_created = False
                lap("task-delete")
            if not self.task_created:
                self._create_task(cd)
                lap("task-create")
            pid = cd.start(self.cid)
            lap("task-start")
        took = int((time.monotonic() - start) * 1e6)
        rs = _read_restore_stats(self.work)
        return agent_pb2.Restored(
            pid=pid, forking_time=rs.forking_time, restore_time=rs.restore_time,
            pages_restored=rs.pages_restored, pages_compared=rs.pages_compared,
            pages_skipped_cow=rs.pages_skipped_cow, restore_us=took, phases_us=phases)

    def rollback(self) -> None:
        """Remove everything this migration made here (best effort, logged)."""
        self._criu.abort()
        if self.page_server is not None and self.page_server.poll() is None:
            self.page_server.kill()
            self.page_server.wait()
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        b = self.begin
        try:
            with connect(self.cfg.containerd, b.namespace) as cd:
                if self.task:
                    cd.remove_task(self.cid)
                if self.container:
                    with contextlib.suppress(ContainerdError):
                        cd.delete_container(self.cid)
                if self.snapshot:
                    with contextlib.suppress(ContainerdError):
                        cd.remove_snapshot(b.snapshotter, b.snapshot_key)
                if self.imported:
                    ctr(cd.address, b.namespace, "images", "rm", b.image)
        except ContainerdError as exc:
            log.error("rolling back %s: %s", self.cid, exc)
        for pid in lazy_daemons(str(self.images)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.stage, ignore_errors=True)
        log.info("migration of %s rolled back", self.cid)

    def _own(self) -> None:
        """Write down what this migration made in containerd (:data:`OWNED`), so that an
        agent that ended mid-migration rolls it back when it starts again."""
        b = self.begin
        doc = {"namespace": b.namespace, "container_id": self.cid,
               "snapshotter": b.snapshotter, "snapshot_key": b.snapshot_key,
               "image": b.image if self.imported else ""}
        tmp = self.stage / f".{OWNED}"
        tmp.write_text(json.dumps(doc))
        tmp.rename(self.stage / OWNED)

    def _keep_lazy_log(self) -> None:
        """Post-copy ended: if the task no longer runs, keep CRIU's lazy-pages log (it tells
        why the pages stopped coming) beside the task's log, out of the staging directory."""
        try:
            with connect(self.cfg.containerd, self.begin.namespace) as cd:
                t = cd.task(self.cid)
            if t is not None and t.status == "RUNNING":
                return
            target = self.cfg.work_dir / "logs" / f"{self.cid}-lazy-pages.log"
            shutil.copyfile(self.work / "lazy-pages.log", target)
            log.warning("%s is %s after post-copy; CRIU's lazy-pages log kept at %s", self.cid,
                        t.status if t else "gone", target)
        except (OSError, ContainerdError) as exc:
            log.error("keeping the lazy-pages log of %s: %s", self.cid, exc)

    def release(self) -> None:
        """Committed: the container is this host's now; drop the staging directory once
        post-copy (if any) has ended."""
        (self.stage / OWNED).unlink(missing_ok=True)

        def later() -> None:
            deadline = time.monotonic() + 24 * 3600
            lazy = bool(lazy_daemons(str(self.images)))
            while lazy_daemons(str(self.images)) and time.monotonic() < deadline:
                time.sleep(0.2)
            if lazy:
                self._keep_lazy_log()
            shutil.rmtree(self.stage, ignore_errors=True)

        threading.Thread(target=later, name=f"release-{self.cid}", daemon=True).start()


class _Servicer(agent_pb2_grpc.AgentServicer):  # type: ignore[misc]
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg

    def Probe(self, request: Any, context: Any) -> Any:
        try:
            facts = host_facts(self.cfg.criu, str(self.cfg.work_dir))
            reply = agent_pb2.ProbeReply(
                facts=agent_pb2.HostFacts(
                    kernel=facts.kernel, machine=facts.machine, criu_version=facts.criu_version,
                    lazy_pages=facts.lazy_pages, mem_dirty_track=facts.mem_dirty_track,
                    pipe_max_size=facts.pipe_max_size, free_bytes=facts.free_bytes,
                    hostname=facts.hostname, nftables_lock=bool(facts.nftables_lock),
                    criu_tls=bool(facts.criu_tls)),
                cpu_problem=cpuinfo_check(self.cfg.criu, request.cpuinfo))
            if request.namespace:
                with connect(self.cfg.containerd, request.namespace) as cd:
                    if request.parent_snapshot:
                        reply.has_parent_snapshot = cd.has_snapshot(request.snapshotter,
                                                                    request.parent_snapshot)
                    if request.container_id:
                        reply.container_exists = cd.has_container(request.container_id)
            return reply
        except Exception as exc:
            context.abort(*status_of(exc))

    def Status(self, request: Any, context: Any) -> Any:
        """The container's task here; :data:`PROVISIONAL` while a migration of it is not
        committed (its :data:`OWNED` record exists: under way, rolling back, or left by an
        agent that ended and rolls it back when it starts)."""
        try:
            stages = stages_of(self.cfg.work_dir, request.container_id)
            if any((p / OWNED).exists() for p in stages):
                return agent_pb2.StatusReply(status=PROVISIONAL)
            with connect(self.cfg.containerd, request.namespace) as cd:
                t = cd.task(request.container_id)
            running = any(lazy_daemons(str(p / "images")) for p in stages)
            if t is None:
                return agent_pb2.StatusReply(lazy_pages_running=running)
            return agent_pb2.StatusReply(status=t.status, exit_status=t.exit_status,
                                         lazy_pages_running=running)
        except Exception as exc:
            context.abort(*status_of(exc))

    def Discard(self, request: Any, context: Any) -> Any:
        try:
            with connect(self.cfg.containerd, request.namespace) as cd:
                cid = request.container_id
                record = cd.container(cid)
                if (task := cd.task(cid)) is not None and task.pid:
                    # its sockets would close the connections the source takes back
                    cut_off(task.pid)
                cd.remove_task(cid)
                cd.delete_container(cid)
                with contextlib.suppress(ContainerdError):
                    cd.remove_snapshot(record.snapshotter, record.snapshot_key)
            log.warning("%s discarded (its post-copy failed)", cid)
            return agent_pb2.StatusReply()
        except Exception as exc:
            context.abort(*status_of(exc))

    def Migrate(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "begin":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a migration starts with Begin")
            return
        recv = _Receive(self.cfg, first.begin)
        log.info("receiving %s (%s) from %s", recv.cid,
                 agent_pb2.Method.Name(first.begin.method), context.peer())
        if not first.begin.page_server_tls and str(context.peer()).startswith("ipv"):
            log.warning("%s: CRIU's page server WITHOUT TLS (the source asked for it): anyone "
                        "who reaches it can read or write the container's memory", recv.cid)
        committed = False
        try:
            total = last = 0
            restored = False
            for req in request_iterator:
                kind = req.WhichOneof("kind")
                if kind == "chunk" and not restored:
                    recv.take(req.chunk)
                    total += len(req.chunk.data)
                    if total - last >= _RECEIVED_EVERY:
                        last = total
                        yield agent_pb2.MigrateReply(received=agent_pb2.Received(bytes=total))
                elif kind == "prepare" and not recv.prepared and not restored:
                    yield agent_pb2.MigrateReply(prepared=recv.prepare(
                        req.prepare.page_server_host, req.prepare.create_task))
                    log.info("%s prepared", recv.cid)
                elif kind == "end" and not restored:
                    yield agent_pb2.MigrateReply(received=agent_pb2.Received(bytes=total))
                    restored_msg = recv.restore()
                    restored = True
                    log.info("%s runs here (pid %d)", recv.cid, restored_msg.pid)
                    yield agent_pb2.MigrateReply(restored=restored_msg)
                elif kind == "commit" and restored:
                    committed = True
                    log.info("%s committed", recv.cid)
                    break
                else:
                    raise MigrateError(f"unexpected {kind} in a migration stream")
        except Exception as exc:
            log.error("migration of %s failed: %s", recv.cid, exc)
            recv.rollback()
            context.abort(*status_of(exc))
        if committed:
            recv.release()
        else:
            log.error("migration of %s ended without commit", recv.cid)
            recv.rollback()
            context.abort(grpc.StatusCode.ABORTED, "the source ended the migration")


def stages_of(work_dir: Path, cid: str) -> list[Path]:
    """The staging directories of migrations of ``cid`` (``stage-<cid>-<8 hex>``)."""
    head = f"{STAGE_PREFIX}{cid}-"
    return [p for p in work_dir.glob(f"{glob_escape(head)}*")
            if re.fullmatch(r"[0-9a-f]{8}", p.name[len(head):])]


def page_servers(images_dir: str) -> list[int]:
    """Pids of ``criu page-server`` processes writing into ``images_dir``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
                if b"page-server" in argv and images_dir.encode() in argv:
                    found.append(int(name))
    return found


def _roll_back_owned(containerd: str, owned: Path) -> None:
    """Remove what an unfinished migration made in containerd (its :data:`OWNED` record)."""
    try:
        doc = json.loads(owned.read_text())
        cid, namespace = str(doc["container_id"]), str(doc["namespace"])
        with connect(containerd, namespace) as cd:
            cd.remove_task(cid)
            with contextlib.suppress(ContainerdError):
                cd.delete_container(cid)
            with contextlib.suppress(ContainerdError):
                cd.remove_snapshot(str(doc["snapshotter"]), str(doc["snapshot_key"]))
            if doc.get("image"):
                ctr(cd.address, namespace, "images", "rm", str(doc["image"]))
        log.warning("rolled back %s (left by an agent that ended mid-migration)", cid)
    except (OSError, ValueError, KeyError, ContainerdError) as exc:
        log.error("rolling back what %s names: %s", owned, exc)


def _clean_stale(work_dir: Path, containerd: str) -> None:
    for stale in work_dir.glob(f"{STAGE_PREFIX}*"):
        # a page server of an agent that ended mid-migration: its dump is abandoned
        for pid in page_servers(str(stale / "images")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if (stale / OWNED).exists():
            _roll_back_owned(containerd, stale / OWNED)
        if not lazy_daemons(str(stale / "images")):
            log.warning("removing %s (left by an agent that ended mid-migration)", stale)
            shutil.rmtree(stale, ignore_errors=True)


def serve(cfg: AgentConfig, ready: threading.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT. Returns the exit status.

    Raises:
        MigrateError: a TCP address without TLS and without ``insecure_tcp``.
    """
    cfg.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _clean_stale(cfg.work_dir, cfg.containerd)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[
        ("grpc.max_receive_message_length", 8 << 20),
        ("grpc.max_send_message_length", 8 << 20),
        ("grpc.so_reuseport", 0),
    ])
    agent_pb2_grpc.add_AgentServicer_to_server(_Servicer(cfg), server)
    for address in cfg.listen:
        if is_unix(address):
            path = address.removeprefix("unix://")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            server.add_insecure_port(f"unix://{path}")
        elif cfg.tls is not None:
            server.add_secure_port(address, server_credentials(cfg.tls))
        elif cfg.insecure_tcp:
            log.warning("listening on %s WITHOUT TLS (--insecure-tcp): anyone who can reach "
                        "it can run containers here", address)
            server.add_insecure_port(address)
        else:
            raise MigrateError(f"refusing plaintext TCP on {address}: give --tls-cert, "
                               "--tls-key and --tls-ca (mutual TLS), or --insecure-tcp")
    server.start()
    log.info("agent listening on %s (containerd %s)", ", ".join(cfg.listen), cfg.containerd)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if ready is not None:
        ready.set()
    stop.wait()
    server.stop(grace=5).wait()
    return 0

