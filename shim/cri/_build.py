"""``pyrunc checkpoint-image build``: a checkpoint archive as an OCI image (KEP-2008).

Strategy: the archive is checked as a restore would check it (:mod:`shim.cri._extract`), then
becomes the one layer of an image (an uncompressed tar layer is a tar: the archive's bytes, as
they are). The image is an OCI layout tar: ``oci-layout``, ``index.json`` naming one image
index blob (so containerd's import makes that index the image's target), the index (one
linux/amd64 manifest), the manifest (config and layer), a minimal config. The index **and** the
manifest carry the ``org.criu.checkpoint.*`` annotations and CRI-O's key
(:func:`shim.cri._ocimage.checkpoint_annotations`): containerd reads the index, CRI-O the
manifest. Blobs and JSON are written in a fixed order with fixed times, so the same archive and
reference give the same image digest. ``--import`` hands the layout to ``ctr images import``
(the containerd client every containerd package ships) into the CRI namespace.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._errors import Internal, InvalidArgument
from ._extract import check_archive
from ._ocimage import LAYER_TAR, checkpoint_annotations, parse_json

__all__ = ["BuiltImage", "build_layout", "import_layout", "temporary_layout"]

ENGINE: Final = "pyrunc"
_INDEX: Final = "application/vnd.oci.image.index.v1+json"
_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
_REF_NAME: Final = "org.opencontainers.image.ref.name"
_IMAGE_NAME: Final = "io.containerd.image.name"
_EPOCH: Final = 0
_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """What was built: the image's reference and its index digest (``ref@digest`` pulls it)."""

    ref: str
    digest: str
    annotations: Mapping[str, str]


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _desc(media_type: str, data_digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": data_digest, "size": size, **extra}


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def _member(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, _EPOCH
    return info


def _read_entry(archive: Path, name: str) -> bytes:
    with tarfile.open(archive, mode="r:*") as tar:
        for info in tar:
            if info.name.removeprefix("./") == name and info.isreg():
                f = tar.extractfile(info)
                if f is not None:
                    return f.read(4 << 20)
    return b""


def _name_of(ref: str) -> str:
    head, _, last = ref.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def _tag_of(ref: str) -> str:
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def build_layout(archive: Path, ref: str, out: Path) -> BuiltImage:
    """Write the OCI layout tar of checkpoint ``archive`` named ``ref`` to new file ``out``.

    Raises:
        InvalidArgument: the archive is not a checkpoint archive (entry named), or ``ref`` is
            not a name[:tag].
    """
    if not ref or "@" in ref or any(c.isspace() for c in ref):
        raise InvalidArgument(f"image reference {ref!r}: give NAME[:TAG]")
    check_archive(archive)
    config_dump = parse_json(_read_entry(archive, "config.dump"), "config.dump")
    spec = parse_json(_read_entry(archive, "spec.dump"), "spec.dump")
    raw = spec.get("annotations")
    spec_annotations = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    annotations = checkpoint_annotations(config_dump, spec_annotations, ENGINE)

    layer_digest, layer_size = _file_digest(archive)
    config = _json({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "created": "1970-01-01T00:00:00Z",
    })
    manifest = _json({
        "schemaVersion": 2, "mediaType": _MANIFEST,
        "config": _desc(_CONFIG, _sha256(config), len(config)),
        "layers": [_desc(LAYER_TAR, layer_digest, layer_size)],
        "annotations": annotations,
    })
    index = _json({
        "schemaVersion": 2, "mediaType": _INDEX,
        "manifests": [_desc(_MANIFEST, _sha256(manifest), len(manifest),
                            platform={"architecture": "amd64", "os": "linux"})],
        "annotations": annotations,
    })
    index_digest = _sha256(index)
    # two names, as a pull from a registry gives: NAME:TAG and NAME@DIGEST (CRI resolves a
    # digest reference only through a name of that form)
    top = _json({
        "schemaVersion": 2, "mediaType": _INDEX,
        "manifests": [_desc(_INDEX, index_digest, len(index),
                            annotations={_IMAGE_NAME: ref, _REF_NAME: _tag_of(ref)}),
                      _desc(_INDEX, index_digest, len(index),
                            annotations={_IMAGE_NAME: f"{_name_of(ref)}@{index_digest}"})],
    })
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                     format=tarfile.USTAR_FORMAT) as tar:
            small = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
                     ("index.json", top)]
            for data in (config, manifest, index):
                small.append((f"blobs/sha256/{_sha256(data)[7:]}", data))
            tar.addfile(_dir("blobs"))
            tar.addfile(_dir("blobs/sha256"))
            for name, data in small:
                tar.addfile(_member(name, len(data)), io.BytesIO(data))
            with open(archive, "rb") as src:
                tar.addfile(_member(f"blobs/sha256/{layer_digest[7:]}", layer_size), src)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return BuiltImage(ref, index_digest, annotations)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _EPOCH
    return info


def import_layout(layout: Path, address: str, namespace: str, ctr: str = "ctr") -> None:
    """``ctr images import`` of an OCI layout tar into containerd's ``namespace``.

    Raises:
        Internal: ctr failed (its last line of output).
    """
    argv = [ctr, "--address", address.removeprefix("unix://"), "--namespace", namespace,
            "images", "import", "--no-unpack", str(layout)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Internal(f"{ctr} images import: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise Internal(f"{ctr} images import: {lines[-1]}")


def temporary_layout(directory: Path | None = None) -> Path:
    """A name for a layout tar that is imported and then removed."""
    fd, name = tempfile.mkstemp(prefix="checkpoint-image-", suffix=".tar", dir=directory)
    os.close(fd)
    os.unlink(name)
    return Path(name)
