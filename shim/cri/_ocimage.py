"""Checkpoint OCI images (KEP-2008): what marks one, and where its archive is.

Strategy: pure functions on the JSON of an OCI index or manifest. An image is a checkpoint if
its index or its manifest carries ``org.criu.checkpoint.container.name`` (checkpointctl's key,
read by containerd 2.x on the index) or CRI-O's ``io.kubernetes.cri-o.annotations.checkpoint.name``
(read on the manifest). Its archive is the image's only layer (``buildah add cp.tar /`` and
``pyrunc checkpoint-image build`` both give one layer holding the archive's entries), plain or
compressed. :func:`checkpoint_annotations` is what ``pyrunc checkpoint-image build`` writes on
both the index and the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._errors import InvalidArgument

__all__ = [
    "CHECKPOINT_NAME",
    "CRIO_CHECKPOINT_NAME",
    "INDEX_TYPES",
    "LAYER_TAR",
    "MANIFEST_TYPES",
    "ArchiveLayer",
    "Reference",
    "archive_layer",
    "checkpoint_annotations",
    "is_checkpoint",
    "parse_json",
]

CHECKPOINT_NAME: Final = "org.criu.checkpoint.container.name"
CRIO_CHECKPOINT_NAME: Final = "io.kubernetes.cri-o.annotations.checkpoint.name"
_PREFIX: Final = "org.criu.checkpoint."
INDEX_TYPES: Final = frozenset({"application/vnd.oci.image.index.v1+json",
                                "application/vnd.docker.distribution.manifest.list.v2+json"})
MANIFEST_TYPES: Final = frozenset({"application/vnd.oci.image.manifest.v1+json",
                                   "application/vnd.docker.distribution.manifest.v2+json"})
LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
_MAX_LAYERS: Final = 1


@dataclass(frozen=True, slots=True)
class Reference:
    """A descriptor: what to read next from the content store."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ArchiveLayer:
    """The layer that holds a checkpoint image's archive."""

    layer: Reference
    container_name: str


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or InvalidArgument naming ``what``."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: not a JSON object")
    return doc


def _annotations(doc: Mapping[str, Any]) -> dict[str, str]:
    raw = doc.get("annotations")
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def is_checkpoint(annotations: Mapping[str, str]) -> bool:
    """Whether an index's or manifest's annotations mark a checkpoint image."""
    return bool(annotations.get(CHECKPOINT_NAME) or annotations.get(CRIO_CHECKPOINT_NAME))


def _reference(raw: object, what: str) -> Reference:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise InvalidArgument(f"{what}: a descriptor without a digest")
    digest = str(raw["digest"])
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise InvalidArgument(f"{what}: digest {digest!r} is not sha256")
    return Reference(str(raw.get("mediaType", "")), digest, int(raw.get("size", 0)))


def manifest_of_index(index: Mapping[str, Any], what: str) -> Reference:
    """The index's manifest for linux/amd64, or its only one."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise InvalidArgument(f"{what}: an index without manifests")
    for m in manifests:
        platform = m.get("platform") if isinstance(m, dict) else None
        if not isinstance(platform, dict) or (platform.get("os") in ("linux", None)
                                              and platform.get("architecture")
                                              in ("amd64", None)):
            return _reference(m, what)
    return _reference(manifests[0], what)


def archive_layer(index: Mapping[str, Any] | None, manifest: Mapping[str, Any],
                  what: str) -> ArchiveLayer | None:
    """The archive layer if the index or the manifest marks a checkpoint, else None.

    Raises:
        InvalidArgument: marked as a checkpoint, but not with exactly one layer.
    """
    marks = {**(_annotations(index) if index is not None else {}), **_annotations(manifest)}
    if not is_checkpoint(marks):
        return None
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != _MAX_LAYERS:
        count = len(layers) if isinstance(layers, list) else 0
        raise InvalidArgument(f"{what}: a checkpoint image has one layer, this one {count}")
    name = marks.get(CHECKPOINT_NAME) or marks.get(CRIO_CHECKPOINT_NAME, "")
    return ArchiveLayer(_reference(layers[0], what), name)


def checkpoint_annotations(config_dump: Mapping[str, Any], spec_annotations: Mapping[str, str],
                           engine: str) -> dict[str, str]:
    """The ``org.criu.checkpoint.*`` annotations (and CRI-O's key) of a checkpoint image made
    from an archive with this ``config.dump`` and ``spec.dump`` annotations."""
    name = str(spec_annotations.get("io.kubernetes.container.name")
               or spec_annotations.get("io.kubernetes.cri.container-name")
               or config_dump.get("name", ""))
    pod = str(spec_annotations.get("io.kubernetes.pod.name")
              or spec_annotations.get("io.kubernetes.cri.sandbox-name", ""))
    namespace = str(spec_annotations.get("io.kubernetes.pod.namespace")
                    or spec_annotations.get("io.kubernetes.cri.sandbox-namespace", ""))
    return {
        CHECKPOINT_NAME: name,
        f"{_PREFIX}pod.name": pod,
        f"{_PREFIX}pod.namespace": namespace,
        f"{_PREFIX}rootfsImageName": str(config_dump.get("rootfsImageName", "")),
        f"{_PREFIX}rootfsImageRef": str(config_dump.get("rootfsImageRef", "")),
        f"{_PREFIX}runtime.name": str(config_dump.get("runtime", "")),
        f"{_PREFIX}engine.name": engine,
        CRIO_CHECKPOINT_NAME: name,
    }
