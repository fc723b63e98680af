"""The CreateContainer request a restore sends to containerd's CRI (shim.cri._restore)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from shim.api.k8s.cri.runtime.v1 import api_pb2
from shim.bundle import RESTORE_ANNOTATION
from shim.checkpoint.plan import UNPACKING
from shim.cri._errors import InvalidArgument
from shim.cri._restore import read_meta, restore_request

SPEC = {
    "process": {"args": ["/bin/sh", "-c", "exec counter"], "cwd": "/work",
                "env": ["PATH=/usr/bin", "POD_NAME=pod-a", "EMPTY="]},
    "annotations": {"io.kubernetes.cri.sandbox-id": "old-sandbox",
                    "io.kubernetes.container.hash": "old-hash",
                    "io.kubernetes.container.restartCount": "3",
                    "app.example/keep": "yes", "org.criu.config": "/old/criu.conf"},
}


def unpacked(tmp_path: Path, mounts: list[str] = ()) -> Path:  # type: ignore[assignment]
    (tmp_path / "config.dump").write_text(json.dumps({
        "rootfsImageName": "localhost/base:1", "rootfsImageRef": "sha256:" + "b" * 64,
        "checkpointedTime": "2026-11-30T04:00:00.5Z"}))
    (tmp_path / "spec.dump").write_text(json.dumps(SPEC))
    (tmp_path / "status.dump").write_text(json.dumps(
        {"mounts": [{"container_path": m, "host_path": "/old" + m} for m in mounts]}))
    return tmp_path


def request(mounts: list[str] = ()) -> api_pb2.CreateContainerRequest:  # type: ignore[assignment]
    return api_pb2.CreateContainerRequest(
        pod_sandbox_id="new-sandbox",
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="counter", attempt=1),
            image=api_pb2.ImageSpec(image="/var/lib/kubelet/checkpoints/ck.tar"),
            annotations={"io.kubernetes.container.hash": "new-hash",
                         "io.kubernetes.container.restartCount": "1"},
            labels={"io.kubernetes.pod.uid": "new-uid"},
            mounts=[api_pb2.Mount(container_path=m, host_path="/new" + m) for m in mounts],
            log_path="counter/1.log"),
    )


def test_request_has_the_checkpoint_process_and_the_new_identity(tmp_path: Path) -> None:
    meta = read_meta(unpacked(tmp_path))
    new = restore_request(request(), meta, base_image="localhost/base:1",
                          images_dir="/w/restore/ck-1/checkpoint",
                          checkpoint_image="/var/lib/kubelet/checkpoints/ck.tar")
    c = new.config
    assert new.pod_sandbox_id == "new-sandbox"
    assert c.image.image == "localhost/base:1"
    assert list(c.command) == ["/bin/sh", "-c", "exec counter"] and list(c.args) == []
    assert c.working_dir == "/work"
    assert [(e.key, e.value) for e in c.envs] == [
        ("PATH", b"/usr/bin"), ("POD_NAME", b"pod-a"), ("EMPTY", b"")]
    assert dict(c.annotations) == {
        "io.kubernetes.container.hash": "new-hash",
        "io.kubernetes.container.restartCount": "1",
        "app.example/keep": "yes",
        "restored": "true",
        "checkpointedAt": "2026-11-30T04:00:00.5Z",
        "checkpointImage": "/var/lib/kubelet/checkpoints/ck.tar",
        RESTORE_ANNOTATION: "/w/restore/ck-1/checkpoint",
    }
    assert c.metadata.attempt == 1 and c.log_path == "counter/1.log"
    assert dict(c.labels) == {"io.kubernetes.pod.uid": "new-uid"}


def test_a_mount_of_the_checkpoint_must_be_in_the_request(tmp_path: Path) -> None:
    meta = read_meta(unpacked(tmp_path, ["/data", "/etc/hosts"]))
    with pytest.raises(InvalidArgument, match="/data"):
        restore_request(request(), meta, base_image="b", images_dir="/i", checkpoint_image="c")
    new = restore_request(request(["/data"]), meta, base_image="b", images_dir="/i",
                          checkpoint_image="c")
    assert [m.host_path for m in new.config.mounts] == ["/new/data"]


@pytest.mark.parametrize(("config", "spec", "match"), [
    ({}, SPEC, "names no base image"),
    ({"rootfsImageName": "x"}, {"annotations": {}}, "no process"),
    ({"rootfsImageName": "x"}, [1], "not a JSON object"),
])
def test_bad_metadata_refused(tmp_path: Path, config: object, spec: object,
                              match: str) -> None:
    (tmp_path / "config.dump").write_text(json.dumps(config))
    (tmp_path / "spec.dump").write_text(json.dumps(spec))
    with pytest.raises(InvalidArgument, match=match):
        read_meta(tmp_path)


def test_a_call_without_deadline_has_none_downstream() -> None:
    """grpcio reports no deadline as a huge time remaining; passed on, it would expire at
    once (the forwarded StartContainer failed with DeadlineExceeded)."""
    from shim.cri._checkpoint import Clock
    from shim.cri._proxy import NO_DEADLINE, _timeout

    class Context:
        def __init__(self, remaining: float | None) -> None:
            self.remaining = remaining

        def time_remaining(self) -> float | None:
            return self.remaining

    for huge in (None, NO_DEADLINE * 2, 1e300):
        assert _timeout(Context(huge)) is None  # type: ignore[arg-type]
        assert Clock(huge).left() is None
    assert _timeout(Context(-1.0)) == 0.0  # type: ignore[arg-type]
    left = Clock(30.0).left()
    assert left is not None and 29 < left <= 30


# --- the Restorer against a fake containerd: nothing is left behind on any failure --------


class FakeContainerd:
    """What the Restorer calls; ``fail`` names the call that raises."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.created: list[str] = []
        self.removed: list[str] = []
        self.leases = 0

    def _maybe(self, name: str) -> None:
        if self.fail == name:
            import grpc

            from shim.cri._errors import Upstream

            raise Upstream(grpc.StatusCode.INTERNAL, f"{name} failed")

    def image_status(self, image: str) -> object:
        self._maybe("image_status")
        return api_pb2.Image(id="sha256:" + "c" * 64, repo_tags=[image])  # it is here

    def image_target(self, name: str) -> str:
        return ""

    def pull_image(self, image: str, sandbox: object, timeout: float | None) -> str:
        raise AssertionError("the base image is local; no pull")

    def list_annotations(self) -> list[dict[str, str]]:
        return []

    def create_container(self, request: object, timeout: float | None) -> str:
        self._maybe("create_container")
        self.created.append("cid-1")
        return "cid-1"

    def remove_container(self, cid: str) -> None:
        self.removed.append(cid)

    def lease(self) -> object:
        import contextlib

        fake = self

        @contextlib.contextmanager
        def held() -> object:
            fake.leases += 1
            try:
                yield "lease"
            finally:
                fake.leases -= 1

        return held()

    def write_blob(self, *args: object, **kwargs: object) -> None:
        self._maybe("write_blob")

    def container(self, cid: str) -> object:
        return object()

    def apply_diff(self, *args: object, **kwargs: object) -> None:
        self._maybe("apply_diff")


def wait_unpacked(unpacked: Path) -> None:
    """What the shim's restore does before it reads CRIU's images (it raises unless the
    endpoint wrote ``complete``)."""
    import asyncio

    from shim.checkpoint import runner

    asyncio.run(runner._wait_unpacked(str(unpacked / UNPACKING)))


def _archive(path: Path, diff: bytes = b"\x1f\x8b" + b"\0" * 30) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in [("config.dump", b'{"rootfsImageName": "localhost/base:1"}'),
                           ("spec.dump", json.dumps(SPEC).encode()),
                           ("checkpoint/inventory.img", b"i"),
                           ("rootfs-diff.tar", diff)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("fail", ["create_container", "write_blob", "apply_diff"])
def test_a_failed_restore_leaves_nothing(tmp_path: Path, fail: str) -> None:
    from shim.cri._errors import Upstream
    from shim.cri._restore import Restorer

    ctd = FakeContainerd(fail)
    restorer = Restorer(ctd, tmp_path / "work")  # type: ignore[arg-type]
    req = request()
    req.config.image.image = str(_archive(tmp_path / "ck.tar"))
    with pytest.raises(Upstream, match=fail):
        restorer.create(req, 30.0)
    assert ctd.removed == ctd.created  # a container made is removed again
    assert ctd.leases == 0
    assert list((tmp_path / "work" / "restore").iterdir()) == []


def test_a_restore_keeps_its_images_and_names_them(tmp_path: Path) -> None:
    from shim.cri._restore import Restorer

    ctd = FakeContainerd()
    restorer = Restorer(ctd, tmp_path / "work")  # type: ignore[arg-type]
    req = request()
    req.config.image.image = str(_archive(tmp_path / "ck.tar"))
    assert restorer.create(req, 30.0).container_id == "cid-1"
    (unpacked,) = (tmp_path / "work" / "restore").iterdir()
    wait_unpacked(unpacked)  # CRIU's images may be written after the answer
    assert (unpacked / "checkpoint" / "inventory.img").read_bytes() == b"i"
    assert (unpacked / UNPACKING).read_text() == "complete\n"
    assert ctd.removed == [] and ctd.leases == 0
    restorer.removed(unpacked)
    assert not unpacked.exists()


def test_an_empty_rootfs_diff_is_not_sent_to_containerd(tmp_path: Path) -> None:
    """A container that changed no file has a rootfs-diff.tar without entries (the
    end-of-archive zeros): no blob is written and nothing applied (either would fail here)."""
    from shim.cri._restore import Restorer

    for fail in ("write_blob", "apply_diff"):
        ctd = FakeContainerd(fail)
        restorer = Restorer(ctd, tmp_path / f"work-{fail}")  # type: ignore[arg-type]
        req = request()
        req.config.image.image = str(_archive(tmp_path / "ck.tar", b"\0" * 10240))
        assert restorer.create(req, 30.0).container_id == "cid-1"
        assert ctd.removed == [] and ctd.leases == 0


def test_an_image_that_is_no_checkpoint_is_not_ours(tmp_path: Path) -> None:
    from shim.cri._restore import Restorer

    restorer = Restorer(FakeContainerd(), tmp_path / "work")  # type: ignore[arg-type]
    req = request()
    req.config.image.image = "localhost/plain:1"  # local, but image_target finds no target
    assert restorer.create(req, 30.0) is None
    req.config.image.image = str(tmp_path / "missing.tar")
    assert restorer.create(req, 30.0) is None


def test_a_container_removed_while_its_images_are_written_stops_the_writing(
    tmp_path: Path, held_unpacking: threading.Event
) -> None:
    """CreateContainer answers before CRIU's images are all written; RemoveContainer then
    stops the writing and the directory goes, with nothing left in flight."""
    from shim.cri._restore import Restorer

    gate = held_unpacking
    restorer = Restorer(FakeContainerd(), tmp_path / "work")  # type: ignore[arg-type]
    req = request()
    req.config.image.image = str(_archive(tmp_path / "ck.tar"))
    assert restorer.create(req, 30.0).container_id == "cid-1"  # answered while held
    (unpacked,) = (tmp_path / "work" / "restore").iterdir()
    assert (unpacked / UNPACKING).exists() and not (unpacked / "checkpoint/inventory.img").exists()
    threading.Timer(0.1, gate.set).start()
    restorer.removed(unpacked)
    assert not unpacked.exists()
    assert not restorer._inflight and not restorer._unpacking


def test_a_base_image_found_is_not_looked_up_again_until_a_create_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second restore from the same base image asks containerd no ImageStatus; if its
    CreateContainer then fails (the image was removed meanwhile), the restorer looks again
    and creates once more; a failure without a kept base image is not retried."""
    import grpc

    from shim.cri._errors import Upstream
    from shim.cri._restore import Restorer

    class Counting(FakeContainerd):
        def __init__(self) -> None:
            super().__init__()
            self.looked: list[str] = []
            self.refuse = 0

        def image_status(self, image: str) -> object:
            self.looked.append(image)
            return super().image_status(image)

        def create_container(self, request: object, timeout: float | None) -> str:
            if self.refuse:
                self.refuse -= 1
                raise Upstream(grpc.StatusCode.NOT_FOUND, "failed to resolve image")
            return super().create_container(request, timeout)

    ctd = Counting()
    restorer = Restorer(ctd, tmp_path / "work")  # type: ignore[arg-type]

    def restore() -> str:
        req = request()
        req.config.image.image = str(_archive(tmp_path / "ck.tar"))
        return str(restorer.create(req, 30.0).container_id)

    assert restore() == "cid-1" and ctd.looked == ["localhost/base:1"]
    assert restore() == "cid-1" and ctd.looked == ["localhost/base:1"]  # kept
    ctd.refuse = 1
    assert restore() == "cid-1" and ctd.looked == ["localhost/base:1"] * 2  # looked again
    assert ctd.created == ["cid-1"] * 3
    fresh = Restorer(Counting(), tmp_path / "work2")  # type: ignore[arg-type]
    fresh._ctd.refuse = 1  # type: ignore[attr-defined]
    req = request()
    req.config.image.image = str(_archive(tmp_path / "ck.tar"))
    with pytest.raises(Upstream, match="resolve"):
        fresh.create(req, 30.0)
    monkeypatch.setattr("shim.cri._restore._BASE_KEPT", 0.0)  # kept no longer
    restore()
    assert ctd.looked == ["localhost/base:1"] * 3


def test_a_directory_is_not_swept_before_its_container_names_it(tmp_path: Path) -> None:
    """CRIU's images can all be written long before CreateContainer answers (a base image
    pull of minutes): another restore's sweep meanwhile must not take the directory, even
    one older than the sweep's grace period, nor any directory whose images are still being
    written; once its container names it, that keeps it."""
    import os
    import time

    from shim.cri._restore import Restorer

    swept: list[bool] = []

    class SlowBase(FakeContainerd):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[dict[str, str]] = []

        def image_status(self, image: str) -> object:
            # the unpacking has ended; a pull that lasts; another restore sweeps meanwhile
            deadline = time.monotonic() + 10
            while restorer._unpacking and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not restorer._unpacking
            (unpacked,) = (tmp_path / "work" / "restore").iterdir()
            old = time.time() - 120
            os.utime(unpacked, (old, old))
            restorer._sweep()
            swept.append(not unpacked.exists())
            return super().image_status(image)

        def create_container(self, request: object, timeout: float | None) -> str:
            cid = super().create_container(request, timeout)
            self.names.append(dict(request.config.annotations))  # type: ignore[attr-defined]
            return cid

        def list_annotations(self) -> list[dict[str, str]]:
            return self.names

    ctd = SlowBase()
    restorer = Restorer(ctd, tmp_path / "work")  # type: ignore[arg-type]
    req = request()
    req.config.image.image = str(_archive(tmp_path / "ck.tar"))
    assert restorer.create(req, 30.0).container_id == "cid-1"
    assert swept == [False]
    (unpacked,) = (tmp_path / "work" / "restore").iterdir()
    wait_unpacked(unpacked)
    assert (unpacked / "checkpoint" / "inventory.img").read_bytes() == b"i"
    restorer._sweep()  # named by its container now
    assert unpacked.exists()
    assert not restorer._inflight and not restorer._unpacking


def test_a_directory_still_being_unpacked_is_not_swept(
    tmp_path: Path, held_unpacking: threading.Event
) -> None:
    """CreateContainer has answered, CRIU's images are still being written and no container
    names the directory (yet, as the endpoint sees it): the sweep leaves it; once written and
    unnamed, the next sweep takes it."""
    import os
    import time

    from shim.cri._restore import Restorer

    gate = held_unpacking
    restorer = Restorer(FakeContainerd(), tmp_path / "work")  # type: ignore[arg-type]
    req = request()
    req.config.image.image = str(_archive(tmp_path / "ck.tar"))
    try:
        assert restorer.create(req, 30.0).container_id == "cid-1"  # answered while held
        (unpacked,) = (tmp_path / "work" / "restore").iterdir()
        assert not restorer._inflight  # create() has let go of it
        old = time.time() - 120
        os.utime(unpacked, (old, old))
        restorer._sweep()  # FakeContainerd: no container names it
        assert unpacked.exists()
    finally:
        gate.set()
    wait_unpacked(unpacked)
    deadline = time.monotonic() + 10
    while restorer._unpacking and time.monotonic() < deadline:  # on_done follows the unlock
        time.sleep(0.01)
    os.utime(unpacked, (old, old))
    restorer._sweep()
    assert not unpacked.exists()
