"""CRI CheckpointContainer, done by the endpoint itself, the same on containerd 1.6 to 2.x.

Strategy (mirrors what containerd 2.x's CRI plugin does, container_checkpoint_linux.go, but
through containerd's gRPC API only, so it works where that plugin is missing):

1. ``location`` must be absolute with an existing directory (InvalidArgument); CRIU must be
   there and >= 3.16 (Unknown with kubelet's "unsupported" text).
2. CRI ContainerStatus: unknown -> NotFound (containerd's answer); not running ->
   FailedPrecondition naming the state. The pod's ``io.pyrunc.checkpoint.*`` annotations (CRI
   PodSandboxStatus) choose options (:mod:`shim.cri._options`).
3. In a private 0700 directory under the work dir: Tasks/Checkpoint (leave running) with the
   images into ``checkpoint/`` and CRIU's work dir (dump.log, stats-dump) into ``work/``;
   containerd's Diff service writes ``rootfs-diff.tar`` (gzip layer with whiteouts) under a
   lease; ``spec.dump`` is the container record's spec; ``config.dump``, ``status.dump`` and
   ``status`` come from CRI; ``container.log`` is the CRI log.
4. :func:`shim.cri._archive.write_archive` writes them to a temporary name beside
   ``location`` and renames it into place.

Whatever fails, the private directory goes, no file appears at ``location``, and a task that
was running but is found paused afterwards is resumed. The caller's deadline bounds every step;
Tasks/Checkpoint gets the time left less a margin, so the shim gives the dump up (it stops
runc) before the caller does. CRIU itself is not killed (its parasite may be inside the
container's processes): it notices that runc is gone at its next step, fails and lets the
container go, for a large container a few seconds after the deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from shim.api.k8s.cri.runtime.v1 import api_pb2

from ._archive import check_location, write_archive
from ._containerd import Containerd
from ._criu import check_criu
from ._dumps import config_dump, status_dump, status_record
from ._errors import CriError, DeadlineExceeded, FailedPrecondition, NotFound, Upstream
from ._options import checkpoint_options
from ._proxy import NO_DEADLINE

__all__ = ["CheckpointSettings", "Checkpointer", "Clock"]

_MARGIN_FRACTION: Final = 0.1
_MARGIN_MAX: Final = 5.0
_REMOVE_ATTEMPTS: Final = 100
STATS_FILE: Final = "stats-dump"
DUMP_LOG: Final = "dump.log"


@dataclass(frozen=True, slots=True)
class CheckpointSettings:
    """Where the endpoint stages checkpoints and which CRIU it checks for."""

    work_dir: Path
    criu: str = "criu"


class Clock:
    """The caller's deadline (None = none; see :data:`shim.cri._proxy.NO_DEADLINE`) as a
    monotonic instant."""

    def __init__(self, remaining: float | None) -> None:
        none = remaining is None or remaining > NO_DEADLINE
        self.end = None if none else time.monotonic() + remaining  # type: ignore[operator]

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        left = self.left()
        return left is not None and left <= 0

    def for_dump(self) -> float | None:
        left = self.left()
        if left is None:
            return None
        return max(left - min(_MARGIN_MAX, left * _MARGIN_FRACTION), 0.001)


def _remove(stage: Path) -> None:
    """Remove the staging directory. After a dump that was given up on, runc is stopped but
    CRIU may still be writing into it until it notices; retry until the directory is gone
    (once it is, CRIU cannot create anything there any more)."""
    for _ in range(_REMOVE_ATTEMPTS):
        shutil.rmtree(stage, ignore_errors=True)
        if not stage.exists():
            return
        time.sleep(0.1)


def _state_name(state: int) -> str:
    return str(api_pb2.ContainerState.Name(state))


class Checkpointer:
    """Serves CheckpointContainer against one containerd."""

    def __init__(self, containerd: Containerd, settings: CheckpointSettings) -> None:
        self._ctd = containerd
        self._settings = settings

    def checkpoint(self, request: Any, remaining: float | None) -> None:
        """Write the archive of ``request.container_id`` at ``request.location``.

        Raises:
            CriError: everything that goes wrong, typed (see the module doc).
        """
        clock = Clock(remaining)
        location = check_location(str(request.location))
        if not request.container_id:
            raise NotFound("container_id: empty")
        check_criu(self._settings.criu)
        status = self._ctd.container_status(str(request.container_id)).status
        cid = str(status.id)
        if status.state != api_pb2.ContainerState.CONTAINER_RUNNING:
            raise FailedPrecondition(
                f"container {cid} is {_state_name(status.state)}: only running containers can "
                "be checkpointed")
        pod = self._ctd.pod_status(self._ctd.sandbox_of(cid))
        record = self._ctd.container(cid)
        task = self._ctd.task(cid)
        if task.status not in ("RUNNING", "PAUSED"):
            raise FailedPrecondition(f"container {cid}: task is {task.status}, not running")
        self._settings.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"checkpoint-{cid[:12]}-",
                                      dir=self._settings.work_dir))
        try:
            images, work = stage / "checkpoint", stage / "work"
            options = checkpoint_options(record.runtime, dict(pod.annotations),
                                         image_path=str(images), work_path=str(work),
                                         containerd_major=self._ctd.major_version())
            # Under one lease: what containerd 1.x's Tasks/Checkpoint puts into its content
            # store for a runtime it does not read options for, and the rootfs diff's blob.
            with self._ctd.lease():
                self._dump(cid, options, clock, was_paused=task.status == "PAUSED")
                checkpointed = time.time_ns()
                self._ctd.rootfs_diff(record, stage / "rootfs-diff.tar", clock.left())
            self._write_dumps(stage, status, pod, record.runtime, record.spec, task.pid,
                              checkpointed)
            entries = [("checkpoint", images)]
            for name in ("config.dump", "container.log", "rootfs-diff.tar", "spec.dump",
                         "status", "status.dump"):
                if (stage / name).exists():
                    entries.append((name, stage / name))
            for name in (DUMP_LOG, STATS_FILE):
                if (work / name).is_file():
                    entries.append((name, work / name))
            write_archive(location, entries, clock.expired)
        finally:
            _remove(stage)

    def _dump(self, cid: str, options: Any, clock: Clock, *, was_paused: bool) -> None:
        budget = clock.for_dump()
        until = None if budget is None else time.monotonic() + budget
        try:
            self._ctd.checkpoint(cid, options, budget)
        except Upstream as exc:
            self._thaw(cid, was_paused)
            # containerd 1.6 reports its own expired deadline as Unknown "context deadline
            # exceeded"; the clock tells either way.
            timed_out = until is not None and time.monotonic() >= until
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED or timed_out:
                raise DeadlineExceeded(
                    f"checkpoint of {cid} did not finish before the deadline; it was given up "
                    f"(runc stopped, nothing written) and the container keeps running "
                    f"({exc.details})") from exc
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"container {cid}: {exc.details}") from exc
            raise
        except BaseException:
            self._thaw(cid, was_paused)
            raise

    def _thaw(self, cid: str, was_paused: bool) -> None:
        if was_paused:
            return
        with contextlib.suppress(CriError):
            if self._ctd.task(cid).status == "PAUSED":
                self._ctd.resume(cid)

    def _write_dumps(self, stage: Path, status: Any, pod: Any, runtime: str, spec: bytes,
                     pid: int, checkpointed_ns: int) -> None:
        def put(name: str, data: bytes) -> None:
            fd = os.open(stage / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

        put("config.dump", config_dump(status=status, pod=pod, runtime=runtime,
                                       checkpointed_ns=checkpointed_ns))
        put("status.dump", status_dump(status))
        put("status", status_record(status, pid))
        (stage / "spec.dump").write_bytes(spec)
        os.chmod(stage / "spec.dump", 0o644)
        log = Path(status.log_path) if status.log_path else None
        if log is not None and log.is_file():
            shutil.copyfile(log, stage / "container.log")
            os.chmod(stage / "container.log", 0o600)


