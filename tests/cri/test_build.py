"""Checkpoint OCI images: what ``pyrunc checkpoint-image build`` writes (shim.cri._build) and
how the endpoint tells one (shim.cri._ocimage)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shim.cri._build import build_layout
from shim.cri._errors import InvalidArgument
from shim.cri._ocimage import (
    CHECKPOINT_NAME,
    CRIO_CHECKPOINT_NAME,
    archive_layer,
    is_checkpoint,
)

CONFIG = {"id": "abc", "name": "counter_p_default_u_0", "rootfsImageName": "localhost/t:1",
          "rootfsImageRef": "sha256:" + "1" * 64, "runtime": "io.containerd.pyrunc.v2"}
SPEC = {"process": {"args": ["counter"]},
        "annotations": {"io.kubernetes.cri.container-name": "counter",
                        "io.kubernetes.cri.sandbox-name": "pod-a",
                        "io.kubernetes.cri.sandbox-namespace": "default"}}


def archive(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in [("config.dump", json.dumps(CONFIG).encode()),
                           ("spec.dump", json.dumps(SPEC).encode()),
                           ("checkpoint/inventory.img", b"inv")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def layout(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}


def blob(files: dict[str, bytes], digest: str) -> Any:
    return json.loads(files[f"blobs/sha256/{digest.removeprefix('sha256:')}"])


def test_layout_annotated_on_index_and_manifest(tmp_path: Path) -> None:
    src = archive(tmp_path / "ck.tar")
    built = build_layout(src, "localhost/ck/counter:v1", tmp_path / "oci.tar")
    files = layout(tmp_path / "oci.tar")
    for name, data in files.items():  # every blob is named by its digest
        if name.startswith("blobs/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    top = json.loads(files["index.json"])
    names = [m["annotations"]["io.containerd.image.name"] for m in top["manifests"]]
    assert names == ["localhost/ck/counter:v1", f"localhost/ck/counter@{built.digest}"]
    index = blob(files, built.digest)
    manifest = blob(files, index["manifests"][0]["digest"])
    want = {
        CHECKPOINT_NAME: "counter", CRIO_CHECKPOINT_NAME: "counter",
        "org.criu.checkpoint.pod.name": "pod-a", "org.criu.checkpoint.pod.namespace": "default",
        "org.criu.checkpoint.rootfsImageName": "localhost/t:1",
        "org.criu.checkpoint.rootfsImageRef": "sha256:" + "1" * 64,
        "org.criu.checkpoint.runtime.name": "io.containerd.pyrunc.v2",
        "org.criu.checkpoint.engine.name": "pyrunc",
    }
    assert index["annotations"] == want and manifest["annotations"] == want
    (layer,) = manifest["layers"]
    assert files[f"blobs/sha256/{layer['digest'][7:]}"] == src.read_bytes()
    found = archive_layer(index, manifest, "img")
    assert found is not None and found.layer.digest == layer["digest"]
    again = build_layout(src, "localhost/ck/counter:v1", tmp_path / "oci2.tar")
    assert again.digest == built.digest  # reproducible


def test_build_refuses_a_bad_archive_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("spec.dump")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidArgument, match=r"no config\.dump"):
        build_layout(bad, "localhost/x:1", tmp_path / "oci.tar")
    assert not (tmp_path / "oci.tar").exists()


@pytest.mark.parametrize(("index", "manifest", "marked"), [
    ({"annotations": {CHECKPOINT_NAME: "c"}}, {}, True),
    (None, {"annotations": {CRIO_CHECKPOINT_NAME: "c"}}, True),
    ({"annotations": {"other": "x"}}, {"annotations": {}}, False),
    (None, {}, False),
])
def test_what_marks_a_checkpoint(index: Any, manifest: Any, marked: bool) -> None:
    manifest = {**manifest, "layers": [{"digest": "sha256:" + "a" * 64, "size": 1,
                                         "mediaType": "application/vnd.oci.image.layer.v1.tar"}]}
    assert (archive_layer(index, manifest, "img") is not None) is marked
    assert is_checkpoint({CHECKPOINT_NAME: "x"}) and not is_checkpoint({CHECKPOINT_NAME: ""})


def test_checkpoint_image_with_two_layers_refused() -> None:
    layer = {"digest": "sha256:" + "a" * 64, "size": 1}
    with pytest.raises(InvalidArgument, match="one layer"):
        archive_layer({"annotations": {CHECKPOINT_NAME: "c"}}, {"layers": [layer, layer]}, "i")
