#!/usr/bin/env python3
"""Turn a root filesystem directory into a single-layer OCI image archive.

Strategy: the layer is an uncompressed tar of the directory, written
deterministically (entries sorted, mtime fixed, owner 0:0 with no names,
permission bits normalised), so the same rootfs always gives the same digests.
Around it go the image config (linux/amd64, Cmd, Env), the manifest and an
OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``), itself
a deterministic tar. The index entry carries both ``io.containerd.image.name``
and ``org.opencontainers.image.ref.name`` so ``ctr image import`` gives the
image exactly the requested reference.

Standard library only. Prints the manifest digest on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

__all__ = ["build_image", "layer_tar", "main"]

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes | None = None) -> None:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer_tar(rootfs: Path) -> bytes:
    """Return the deterministic tar of everything under ``rootfs``."""
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        base = Path(dirpath)
        paths.extend(base / name for name in dirnames)
        paths.extend(base / name for name in filenames)
    paths.sort(key=lambda p: p.relative_to(rootfs).as_posix())

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            st = path.lstat()
            info = tarfile.TarInfo(path.relative_to(rootfs).as_posix())
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                info.mode = 0o777
                _add(tar, info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if st.st_mode & stat.S_ISVTX else 0o755
                _add(tar, info)
            elif stat.S_ISREG(st.st_mode):
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                _add(tar, info, path.read_bytes())
            else:
                raise SystemExit(f"mkoci: unsupported file type: {path}")
    return buf.getvalue()


def build_image(rootfs: Path, ref: str, cmd: list[str], env: list[str]) -> tuple[bytes, str]:
    """Return (OCI layout archive bytes, manifest digest)."""
    layer = layer_tar(rootfs)
    layer_digest = _digest(layer)
    config = _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": EPOCH,
            "config": {"Env": env, "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": EPOCH, "created_by": "hack/image/build.sh"}],
        }
    )
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    )
    manifest_digest = _digest(manifest)
    index = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        ANNOTATION_CONTAINERD_NAME: ref,
                        ANNOTATION_REF_NAME: ref,
                    },
                }
            ],
        }
    )

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            _add(tar, info)
        blobs = sorted({_digest(b): b for b in (layer, config, manifest)}.items())
        for digest, blob in blobs:
            info = tarfile.TarInfo("blobs/sha256/" + digest.removeprefix("sha256:"))
            info.mode = 0o644
            _add(tar, info, blob)
        for name, data in (
            ("index.json", index),
            ("oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"})),
        ):
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            _add(tar, info, data)
    return buf.getvalue(), manifest_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="image reference, e.g. localhost/x:latest")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cmd", default="/bin/sh", help="Cmd, split on spaces")
    parser.add_argument("--env", action="append", default=None, help="Env entry (repeatable)")
    args = parser.parse_args(argv)

    archive, digest = build_image(
        args.rootfs, args.ref, args.cmd.split(), args.env or [DEFAULT_PATH]
    )
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(archive)
    tmp.replace(args.out)
    sys.stdout.write(digest + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
