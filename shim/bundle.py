"""The OCI bundle containerd prepares for each container: its spec, read and (once) amended.

Strategy: containerd writes ``config.json`` before Create; the shim reads it once, keeps it in
memory (annotations, cgroups path), amends it with pure functions and writes it back at most
once per Create (and once more per restore attempt, for the network hook). It adds one
annotation before ``runc create``/``runc restore``:
``org.criu.config`` naming ``<bundle>/criu.conf``. runc keeps the annotations as labels and
hands that file to CRIU on every checkpoint and restore (a missing file is ignored), which is
how options runc has no flag for reach CRIU (see ``shim.checkpoint.runner``). A spec that
already names its own CRIU configuration is left alone.
"""

from __future__ import annotations

# ``delete`` (shim.cleanup) imports this module on the critical path of ``ctr run --rm``, for
# a constant: no module-level import of json, pathlib or typing (~10 ms of that process's
# start-up). The daemon has them loaded already (its fork server imported them).
TYPE_CHECKING = False  # (importing typing would cost start-up time; see shim.cli)
if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "CRIU_CONFIG",
    "CRIU_CONFIG_ANNOTATION",
    "CRIU_WORK_DIR",
    "HOOK_MARK",
    "RESTORE_ANNOTATION",
    "UNFINISHED_DUMP",
    "Spec",
    "cgroups_path",
    "own_pid_namespace",
    "process_with_terminal",
    "read_spec",
    "spec_annotations",
    "with_criu_config",
    "with_restore_hook",
    "write_spec",
]

CRIU_CONFIG_ANNOTATION = "org.criu.config"
CRIU_CONFIG = "criu.conf"
CRIU_WORK_DIR = "work/criu-work"
"""CRIU's work directory inside the bundle unless a request names one."""

UNFINISHED_DUMP = "criu-dump-unfinished"
"""A file in the bundle while a dump runs: three lines, the images directory, ``created`` or
``kept`` (whether the dump made that directory), and the file whose presence marks the dump
complete. The ``delete`` action after a shim died mid-dump removes what the dump wrote."""

RESTORE_ANNOTATION = "io.pyrunc.restore.checkpoint"
"""Spec annotation: the CRIU images directory a container is created from (restored at Start).
The CRI endpoint sets it on a container it creates from a checkpoint archive or image."""

Spec = dict[str, object]
"""A parsed OCI runtime spec (config.json)."""


def read_spec(bundle: Path) -> Spec:
    """The bundle's ``config.json`` ({} if it is missing or unreadable)."""
    import json

    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def spec_annotations(spec: Spec) -> dict[str, str]:
    raw = spec.get("annotations")
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def cgroups_path(spec: Spec) -> str:
    linux = spec.get("linux")
    return str(linux.get("cgroupsPath", "")) if isinstance(linux, dict) else ""


def own_pid_namespace(spec: Spec) -> bool:
    """Whether the container gets a PID namespace of its own: one of type ``pid`` without a
    ``path`` (a container in the host's, or joining another's, has none). As containerd's
    ``ShouldKillAllOnExit``, an unreadable spec ({}) counts as none."""
    linux = spec.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    return any(
        isinstance(ns, dict) and ns.get("type") == "pid" and not ns.get("path")
        for ns in (namespaces if isinstance(namespaces, list) else [])
    )


def process_with_terminal(process: bytes, terminal: bool) -> bytes:
    """An exec's process spec (JSON) with ``terminal`` set as the Exec request asks, as
    containerd's runc shim does before ``runc exec`` (``pkg/process/init.go``, ``exec``).

    Raises:
        ValueError: ``process`` is not a JSON object.
    """
    import json

    spec = json.loads(process)
    if not isinstance(spec, dict):
        raise ValueError("the process spec is not a JSON object")
    if spec.get("terminal", False) is terminal:
        return process
    spec["terminal"] = terminal
    return json.dumps(spec).encode()


def write_spec(bundle: Path, spec: Spec) -> None:
    import json

    tmp = bundle / ".config.json.pyrunc"
    tmp.write_text(json.dumps(spec))
    tmp.rename(bundle / "config.json")


HOOK_MARK = "PYRUNC_HOOK=network"
"""In the env of the shim's own hook entry, so a later restore replaces it, not adds one."""


def with_restore_hook(spec: Spec, argv: list[str] | None, timeout: int = 30) -> Spec:
    """``spec`` with ``argv`` as the shim's ``createRuntime`` hook (runc runs it at CRIU's
    ``setup-namespaces`` step of a restore, with the restored init's pid in the state), or
    without it (``None``). The container's own hooks are kept, and run first."""
    spec = dict(spec)
    raw = spec.get("hooks")
    hooks: dict[str, object] = dict(raw) if isinstance(raw, dict) else {}
    current = hooks.get("createRuntime")
    entries = [
        h
        for h in (current if isinstance(current, list) else [])
        if not (isinstance(h, dict) and HOOK_MARK in (h.get("env") or []))
    ]
    if argv is not None:
        entries.append({"path": argv[0], "args": argv, "env": [HOOK_MARK], "timeout": timeout})
    if entries:
        hooks["createRuntime"] = entries
    else:
        hooks.pop("createRuntime", None)
    spec["hooks"] = hooks
    return spec


def with_criu_config(spec: Spec, bundle: Path) -> Spec:
    """``spec`` with ``org.criu.config: <bundle>/criu.conf`` unless it names a file already
    (then ``spec`` itself: nothing to write)."""
    current = spec_annotations(spec)
    if CRIU_CONFIG_ANNOTATION in current:
        return spec
    current[CRIU_CONFIG_ANNOTATION] = str(bundle / CRIU_CONFIG)
    return {**spec, "annotations": current}
