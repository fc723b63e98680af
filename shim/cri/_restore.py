"""CRI CreateContainer from a checkpoint: a container that is restored at StartContainer.

Strategy (what CRI-O and containerd 2.1-2.3 do, but through containerd's API and CRI, so the
same on containerd 1.6 to 2.x, and with the base image found locally first):

1. The CRI image is a checkpoint if it is an existing file (an archive's path) or a local image
   whose index or manifest marks one (:mod:`shim.cri._ocimage`); anything else is not ours
   (the caller forwards the request unchanged).
2. The archive (for an image: its one layer, copied out of the content store) is checked entry
   by entry (headers only, one pass) and unpacked into a private 0700 directory under
   ``<work dir>/restore`` (:mod:`shim.cri._extract`): the dumps and ``rootfs-diff.tar`` at
   once, CRIU's images (the bulk) on a thread while steps 3-5 talk to containerd and on past
   the CreateContainer answer: the shim's restore waits for them
   (:data:`shim.checkpoint.plan.UNPACKING`), so their writing overlaps StartContainer's
   start of the shim (64 MiB: ~15-20 ms that CreateContainer no longer waits for).
3. The base image of ``config.dump`` (``rootfsImageName``, else ``rootfsImageRef``) is used if
   containerd has it, else pulled through containerd's CRI.
4. containerd's CRI creates the container from the base image, with the process (args, env,
   cwd) and annotations of ``spec.dump`` and the new request's identity (pod, metadata, labels,
   its own annotations: hash, restart count, log path); marked ``restored=true``,
   ``checkpointedAt`` and ``checkpointImage`` as containerd 2.x marks it, and with
   :data:`shim.bundle.RESTORE_ANNOTATION` naming the unpacked images: the shim's Create sees it
   (containerd copies it into the OCI spec: the runtime's ``container_annotations``) and
   restores at Start instead of creating. Every mount the checkpoint had must be in the new
   request (CRI-O's rule; CRIU needs them all).
5. ``rootfs-diff.tar`` goes into the content store (on a thread, while step 4 runs) and
   through containerd's Diff service onto the new container's snapshot (whiteouts remove
   what they name), under a lease; an empty one (no entry) is skipped.

Whatever fails, the container (if made) is removed and the directory is gone. The directory
lives as long as the container: :meth:`Restorer.removed` after RemoveContainer, and every
restore sweeps directories no container names any more (on a thread, while it works), but
never one a CreateContainer still works on (until it has answered: by then a container names
it) or whose CRIU images are still being written. If that writing fails after the answer, the
container stays (created, named by RemoveContainer as usual) and its StartContainer fails
naming what failed (the restore reads it from :data:`shim.checkpoint.plan.UNPACKING`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from shim.api.k8s.cri.runtime.v1 import api_pb2
from shim.bundle import RESTORE_ANNOTATION

from ._checkpoint import Clock
from ._containerd import LAYER_GZIP, Containerd
from ._errors import CriError, DeadlineExceeded, InvalidArgument, NotFound, Upstream
from ._extract import Extraction, check_archive, remove_tree
from ._ocimage import INDEX_TYPES, archive_layer, manifest_of_index, parse_json

__all__ = ["RESTORED_MARKS", "CheckpointMeta", "Restorer", "restore_request"]

log = logging.getLogger("pyrunc.cri")

RESTORE_DIR: Final = "restore"
RESTORED_MARKS: Final = ("restored", "checkpointedAt", "checkpointImage")
_NOT_KEPT: Final = ("io.kubernetes.cri.", "io.kubernetes.cri-o.", "org.criu.",
                    "io.pyrunc.restore.", *RESTORED_MARKS)
_MAX_JSON: Final = 4 << 20
_SWEEP_AGE: Final = 60.0  # seconds
_BASE_KEPT: Final = 60.0  # seconds a base image found in containerd is taken as still there
_SPEC_MOUNT_DEFAULTS: Final = frozenset({"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys",
                                         "/sys/fs/cgroup", "/dev/shm", "/etc/hosts",
                                         "/etc/hostname", "/etc/resolv.conf",
                                         "/dev/termination-log"})


@dataclass(frozen=True, slots=True)
class CheckpointMeta:
    """What a restore reads from an unpacked archive."""

    rootfs_image_name: str
    rootfs_image_ref: str
    checkpointed_time: str
    spec: dict[str, Any]
    mounts: tuple[str, ...]  # container paths of the checkpointed container's CRI mounts


def _load(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_JSON + 1)
    except FileNotFoundError:
        return {}
    if len(data) > _MAX_JSON:
        raise InvalidArgument(f"{what}: larger than {_MAX_JSON} bytes")
    return parse_json(data, what)


def read_meta(unpacked: Path) -> CheckpointMeta:
    """``config.dump``, ``spec.dump`` and ``status.dump`` of an unpacked archive.

    Raises:
        InvalidArgument: malformed, or no base image named.
    """
    config = _load(unpacked / "config.dump", "config.dump")
    spec = _load(unpacked / "spec.dump", "spec.dump")
    status = _load(unpacked / "status.dump", "status.dump")
    name = str(config.get("rootfsImageName") or config.get("rootfsImage") or "")
    ref = str(config.get("rootfsImageRef") or "")
    if not name and not ref:
        raise InvalidArgument("config.dump: names no base image (rootfsImageName/Ref)")
    if not isinstance(spec.get("process"), dict):
        raise InvalidArgument("spec.dump: no process")
    raw_mounts = status.get("mounts")
    mounts = tuple(str(m.get("container_path", "")) for m in raw_mounts
                   if isinstance(m, dict)) if isinstance(raw_mounts, list) else ()
    return CheckpointMeta(name, ref, str(config.get("checkpointedTime", "")), spec,
                          tuple(m for m in mounts if m))


def restore_request(request: Any, meta: CheckpointMeta, *, base_image: str, images_dir: str,
                    checkpoint_image: str) -> Any:
    """containerd's CRI CreateContainer for the restore (see the module doc, step 4).

    Raises:
        InvalidArgument: a mount of the checkpoint is missing from the request.
    """
    new = api_pb2.CreateContainerRequest()
    new.CopyFrom(request)
    config = new.config
    have = {m.container_path.rstrip("/") for m in config.mounts}
    missing = [m for m in meta.mounts
               if m.rstrip("/") not in have and m not in _SPEC_MOUNT_DEFAULTS]
    if missing:
        raise InvalidArgument(
            f"the checkpoint has mounts at {', '.join(missing)}; the new container must have "
            "them too")
    process = meta.spec["process"]
    config.image.Clear()
    config.image.image = base_image
    del config.command[:]
    config.command.extend(str(a) for a in process.get("args") or [])
    del config.args[:]
    config.working_dir = str(process.get("cwd") or config.working_dir)
    env = [str(e) for e in process.get("env") or []]
    if env:
        del config.envs[:]
        for item in env:
            key, _, value = item.partition("=")
            config.envs.add(key=key, value=value.encode())
    raw = meta.spec.get("annotations")
    annotations = {str(k): str(v) for k, v in raw.items()
                   if not str(k).startswith(_NOT_KEPT)} if isinstance(raw, dict) else {}
    annotations.update(dict(request.config.annotations))
    annotations.update({
        "restored": "true",
        "checkpointedAt": meta.checkpointed_time,
        "checkpointImage": checkpoint_image,
        RESTORE_ANNOTATION: images_dir,
    })
    config.ClearField("annotations")
    config.annotations.update(annotations)
    return new


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def _empty_tar(path: Path) -> bool:
    """Whether the file is empty or an uncompressed tar without entries (its first block
    is zeros: the end-of-archive marker)."""
    with open(path, "rb") as f:
        block = f.read(512)
    return not any(block)


def _layer_type(path: Path) -> str:
    with open(path, "rb") as f:
        return LAYER_GZIP if f.read(2) == b"\x1f\x8b" else "application/vnd.oci.image.layer.v1.tar"


class _Steps:
    """Milliseconds per step, for the log."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._steps: list[str] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self._steps.append(f"{name} {1000 * (now - self._last):.0f} ms")
        self._last = now

    def __str__(self) -> str:
        return ", ".join(self._steps)


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a checkpoint comes from: an archive file, or an image's layer blob."""

    archive: Path | None = None
    layer_digest: str = ""


class _DiffApply:
    """``rootfs-diff.tar`` onto the new container's snapshot, on a thread of its own: the
    blob goes into the content store (under a lease) while CreateContainer runs, then,
    once :meth:`container` names the container, Diff/Apply puts it onto its snapshot
    (whiteouts remove what they name). An empty diff (no entry: the end-of-archive zeros
    only, as a container that changed no file has it) needs nothing."""

    def __init__(self, ctd: Containerd, diff: Path, clock: Clock) -> None:
        self._ctd = ctd
        self._diff = diff
        self._clock = clock
        self._cid: str | None = None
        self._named = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if diff.is_file() and not _empty_tar(diff):
            self._thread = threading.Thread(target=self._run, name="rootfs diff", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            digest, size = _digest(self._diff)
            with self._ctd.lease():
                self._ctd.write_blob(self._diff, digest, size, self._clock.left())
                if not self._named.wait(self._clock.left()):
                    raise DeadlineExceeded("deadline reached before the rootfs diff was applied")
                if self._cid is None:
                    return  # no container (CreateContainer failed): the lease goes
                record = self._ctd.container(self._cid)
                self._ctd.apply_diff(record, digest, size, _layer_type(self._diff),
                                     self._clock.left())
        except BaseException as exc:  # handed to wait()
            self._error = exc

    def container(self, cid: str | None) -> None:
        """The container to apply the diff to (None: there is none, just end)."""
        self._cid = cid
        self._named.set()

    def wait(self) -> None:
        """Block until the diff is applied.

        Raises:
            CriError: what writing or applying it met.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error


class Restorer:
    """Serves CreateContainer from checkpoints against one containerd."""

    def __init__(self, containerd: Containerd, work_dir: Path) -> None:
        self._ctd = containerd
        self._root = work_dir / RESTORE_DIR
        self._lock = threading.Lock()
        self._inflight: set[Path] = set()
        self._unpacking: dict[Path, Extraction] = {}  # CRIU's images still being written
        self._kinds: dict[str, str] = {}  # image digest -> layer digest or "" (not ours)
        # (rootfsImageName, rootfsImageRef) -> the one containerd had, and when it had it
        self._bases: dict[tuple[str, str], tuple[str, float]] = {}

    # Is it a checkpoint? ------------------------------------------------------------------

    def _source(self, image: str) -> _Source | None:
        if image.startswith("/") and os.path.isfile(image):
            return _Source(archive=Path(image))
        if not image or image.startswith("/"):
            return None
        try:
            found = self._ctd.image_status(image)
        except Upstream:  # a reference containerd cannot parse: its CreateContainer says so
            return None
        if found is None:
            return None
        # CRI names every image it manages by its id too; repo digests are not always there
        digest = ""
        for name in (str(found.id), *found.repo_tags, *found.repo_digests):
            digest = self._ctd.image_target(name)
            if digest:
                break
        if not digest:
            return None
        with self._lock:
            known = self._kinds.get(digest)
        if known is None:
            known = self._layer_of(digest, image)
            with self._lock:
                self._kinds[digest] = known
        return _Source(layer_digest=known) if known else None

    def _layer_of(self, digest: str, image: str) -> str:
        try:
            top = parse_json(self._ctd.read_blob(digest, _MAX_JSON), image)
        except Upstream as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        index: dict[str, Any] | None = None
        manifest = top
        if top.get("mediaType") in INDEX_TYPES or "manifests" in top:
            index = top
            ref = manifest_of_index(top, image)
            manifest = parse_json(self._ctd.read_blob(ref.digest, _MAX_JSON), image)
        found = archive_layer(index, manifest, image)
        return found.layer.digest if found is not None else ""

    # CreateContainer ---------------------------------------------------------------------

    def create(self, request: Any, remaining: float | None) -> Any | None:
        """Create the container of ``request`` from its checkpoint image; None if the image
        is not a checkpoint (the caller forwards the request as it is).

        Raises:
            CriError: typed (bad archive: InvalidArgument naming the entry).
        """
        clock = Clock(remaining)
        image = str(request.config.image.image)
        source = self._source(image)
        if source is None:
            return None
        if not request.pod_sandbox_id:
            raise NotFound("pod_sandbox_id: empty")
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        steps = _Steps()
        # leftovers of earlier restores go meanwhile (this one's directory is in flight)
        threading.Thread(target=self._sweep_quietly, name="sweep", daemon=True).start()
        extraction = self._unpack(source, image, clock)
        unpacked = extraction.dest
        steps.done("check + first files")
        diff: _DiffApply | None = None
        try:
            meta = read_meta(unpacked)
            diff = _DiffApply(self._ctd, unpacked / "rootfs-diff.tar", clock)
            base, known = self._base_image(meta, request.sandbox_config, clock)
            steps.done("base image")
            cid = ""
            try:
                try:
                    cid = self._create(request, meta, base, unpacked, image, clock)
                except Upstream as exc:
                    if not known or exc.code in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                 grpc.StatusCode.CANCELLED):
                        raise
                    # the base image was taken as still there: look again (or pull), once
                    base, _ = self._base_image(meta, request.sandbox_config, clock, fresh=True)
                    cid = self._create(request, meta, base, unpacked, image, clock)
                steps.done("CreateContainer")
            finally:
                diff.container(cid or None)
            try:
                diff.wait()  # its blob was written meanwhile
                steps.done("rootfs diff")
                # CRIU's images may still be being written: the restore waits for them
                # (UNPACKING), so their writing overlaps StartContainer's start of the shim
                log.info("restore of %s into %s: %s", image, cid[:12], steps)
            except BaseException:
                with contextlib.suppress(CriError):  # the first error is the one to report
                    self._ctd.remove_container(cid)
                raise
        except BaseException:
            if diff is not None:
                diff.container(None)
                with contextlib.suppress(BaseException):
                    diff.wait()
            with self._lock:
                self._unpacking.pop(unpacked, None)
            extraction.abort()
            raise
        finally:
            # from here on a container names the directory (or it is gone): the sweep sees
            # the one, and skips it while its CRIU images are still written (_unpacking)
            with self._lock:
                self._inflight.discard(unpacked)
        return api_pb2.CreateContainerResponse(container_id=cid)

    def _unpack(self, source: _Source, image: str, clock: Clock) -> Extraction:
        """Check the archive and start unpacking it (:class:`~shim.cri._extract.Extraction`:
        the dumps and the rootfs diff are there on return, CRIU's images follow). The
        directory is in flight (the sweep leaves it alone) until :meth:`create` ends, and
        unpacking until its CRIU images are all written, whichever ends later."""
        if source.archive is not None:
            checked = check_archive(source.archive, image)
            return self._start(Extraction(checked, self._root, "ckpt-"), image)
        blob_dir = Path(tempfile.mkdtemp(prefix="blob-", dir=self._root))
        with self._lock:
            self._inflight.add(blob_dir)
        try:
            blob = blob_dir / "layer"
            self._ctd.save_blob(source.layer_digest, blob, clock.left())
            checked = check_archive(blob, f"{image} (layer {source.layer_digest})")
            # the layer copy must outlive the thread that reads it: all at once here
            extraction = Extraction(checked, self._root, "ckpt-")
            self._start(extraction, image)
            try:
                extraction.wait()
            except BaseException:  # the directory is gone
                with self._lock:
                    self._inflight.discard(extraction.dest)
                raise
            return extraction
        finally:
            shutil.rmtree(blob_dir, ignore_errors=True)
            with self._lock:
                self._inflight.discard(blob_dir)

    def _start(self, extraction: Extraction, image: str) -> Extraction:
        dest = extraction.dest
        begun = time.monotonic()

        def done(error: BaseException | None) -> None:
            # still in flight: create() lets go of it once a container names it (a base
            # image pull can outlast the unpacking by far)
            with self._lock:
                self._unpacking.pop(dest, None)
            if error is None:
                log.info("restore of %s: CRIU images unpacked in %.0f ms", image,
                          1000 * (time.monotonic() - begun))
            elif not extraction.aborted:  # the restore says so at StartContainer too
                log.error("restore of %s: unpacking %s failed: %s", image, dest, error)

        with self._lock:
            self._inflight.add(dest)
            self._unpacking[dest] = extraction
        try:
            return extraction.start(done)
        except BaseException:
            with self._lock:
                self._inflight.discard(dest)
                self._unpacking.pop(dest, None)
            raise

    def _create(self, request: Any, meta: CheckpointMeta, base: str, unpacked: Path,
                image: str, clock: Clock) -> str:
        new = restore_request(request, meta, base_image=base,
                              images_dir=str(unpacked / "checkpoint"), checkpoint_image=image)
        return self._ctd.create_container(new, clock.left())

    def _base_image(self, meta: CheckpointMeta, sandbox_config: Any, clock: Clock, *,
                    fresh: bool = False) -> tuple[str, bool]:
        """The base image to create from: the first of ``rootfsImageName`` and
        ``rootfsImageRef`` containerd has, else the first pulled. Once found it is taken as
        still there for :data:`_BASE_KEPT` seconds (a lookup less per restore; a
        CreateContainer that fails with it looks again, ``fresh``). Returns the name and
        whether it was taken so."""
        key = (meta.rootfs_image_name, meta.rootfs_image_ref)
        now = time.monotonic()
        with self._lock:
            kept = self._bases.pop(key, None)
            if kept is not None and not fresh and now - kept[1] < _BASE_KEPT:
                self._bases[key] = kept
                return kept[0], True
        for name in key:
            if name and self._ctd.image_status(name) is not None:
                break
        else:
            name = meta.rootfs_image_name or meta.rootfs_image_ref
            self._ctd.pull_image(name, sandbox_config, clock.left())
        with self._lock:
            self._bases[key] = (name, now)
        return name, False

    # The unpacked checkpoints' lifetime ------------------------------------------------------

    def checkpoint_dir(self, cid: str) -> Path | None:
        """The unpacked checkpoint container ``cid`` was made from (None: not ours)."""
        try:
            status = self._ctd.container_status(cid).status
        except CriError:
            return None
        return self._ours(dict(status.annotations).get(RESTORE_ANNOTATION, ""))

    def _ours(self, images_dir: str) -> Path | None:
        if not images_dir:
            return None
        path = Path(images_dir).parent
        return path if path.parent == self._root else None

    def removed(self, unpacked: Path | None) -> None:
        """After RemoveContainer: the container's unpacked checkpoint goes (its unpacking
        stopped first, if it still runs)."""
        if unpacked is None:
            return
        with self._lock:
            extraction = self._unpacking.pop(unpacked, None)
        if extraction is not None:
            extraction.abort()
        remove_tree(unpacked)

    def _busy(self) -> set[Path]:
        """Directories a create() still works on or whose CRIU images are still written."""
        with self._lock:
            return {*self._inflight, *self._unpacking}

    def _sweep_quietly(self) -> None:
        try:
            self._sweep()
        except OSError as exc:  # only leftovers stay: the next restore sweeps again
            log.warning("sweeping %s: %s", self._root, exc)

    def _sweep(self) -> None:
        """Remove unpacked checkpoints that no container names (their container was removed
        behind the endpoint's back) and blob copies of an endpoint that died."""
        # busy before the list too: a create() that ends meanwhile made its container first
        busy = self._busy()
        try:
            named = {self._ours(a.get(RESTORE_ANNOTATION, ""))
                     for a in self._ctd.list_annotations()}
        except CriError:
            return
        busy |= self._busy()
        now = time.time()
        for entry in self._root.iterdir():
            if entry in named or entry in busy:
                continue
            try:  # one being unpacked right now is not in _inflight yet
                if now - entry.lstat().st_mtime < _SWEEP_AGE:
                    continue
            except FileNotFoundError:
                continue
            remove_tree(entry)

