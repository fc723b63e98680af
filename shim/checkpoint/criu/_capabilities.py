"""What CRIU and the host can do, asked before a checkpoint touches a container.

Strategy: mirrors runc ``checkCriuFeatures``/``checkCriuVersion``. :func:`ensure_capable`
compares :class:`Requirements` with what CRIU (VERSION, FEATURE_CHECK; cached per binary in
this process and in :data:`PROBE_CACHE_DIR`, they do not change while the host runs) and the
host (``fs.pipe-max-size``, CAP_SYS_RESOURCE; read every time, an admin may change them)
offer, and raises :class:`~shim.errors.FailedPrecondition` naming each missing capability.
The rules are the pure function :func:`unmet_requirements`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

from shim.checkpoint.criu._client import Criu
from shim.checkpoint.criu._codec import (
    CriuFeatures,
    CriuRequestFailed,
    CriuVersion,
    format_version,
)
from shim.errors import FailedPrecondition
from shim.warm import RUN_DIR

__all__ = [
    "LAZY_PAGES_PIPE_SIZE",
    "CriuCapabilities",
    "HostFacts",
    "Requirements",
    "clear_capability_cache",
    "criu_binary",
    "ensure_capable",
    "parse_cap_eff",
    "probe",
    "read_host_facts",
    "unmet_requirements",
]


LAZY_PAGES_PIPE_SIZE = 4 * 1024 * 1024
"""Pipe size CRIU's lazy page server sets (about 3.2 MiB, rounded up by the kernel to 4 MiB).
Above ``fs.pipe-max-size`` that needs CAP_SYS_RESOURCE, and CRIU ignores the failure and then
splices into fd -1 (see ``docs/lazy-migration.md``)."""

CAP_SYS_RESOURCE = 24


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a checkpoint or restore needs from CRIU and the host.

    Attributes:
        min_version: go-criu version integer (30000 = 3.0, runc's floor).
        mem_track: dirty memory tracking (pre-dump, ``track_mem`` incremental dumps).
        lazy_pages: lazy pages (userfaultfd, plus a 4 MiB pipe for the page server).
    """

    min_version: int = 30000
    mem_track: bool = False
    lazy_pages: bool = False


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Host settings that decide whether CRIU features work beyond what CRIU reports."""

    pipe_max_size: int
    cap_sys_resource: bool


@dataclass(frozen=True, slots=True)
class CriuCapabilities:
    """What was measured: CRIU's version and kernel features, and the host facts."""

    binary: str
    version: CriuVersion
    features: CriuFeatures
    host: HostFacts


def parse_cap_eff(status_text: str) -> int:
    """Return the ``CapEff`` mask from the text of ``/proc/<pid>/status`` (0 if absent)."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    return 0


def read_host_facts() -> HostFacts:
    """Read ``fs.pipe-max-size`` and whether this process has CAP_SYS_RESOURCE (two small
    /proc reads; not cached, an admin may change the sysctl at any time)."""
    with open("/proc/sys/fs/pipe-max-size") as f:
        pipe_max = int(f.read().strip())
    with open("/proc/self/status") as f:
        cap_eff = parse_cap_eff(f.read())
    return HostFacts(pipe_max_size=pipe_max, cap_sys_resource=bool(cap_eff >> CAP_SYS_RESOURCE & 1))


def unmet_requirements(req: Requirements, caps: CriuCapabilities) -> list[str]:
    """Explain each requirement the measured capabilities do not meet ([] = all met)."""
    problems: list[str] = []
    if caps.version.number < req.min_version:
        problems.append(
            f"CRIU {caps.version} is older than the {format_version(req.min_version)}"
            " this checkpoint needs"
        )
    if req.mem_track and not caps.features.mem_track:
        problems.append(
            "pre-dump needs memory dirty tracking (soft-dirty), which this kernel does not"
            f" offer (CRIU FEATURE_CHECK mem_track={_flag(caps.features.mem_track)})"
        )
    if req.lazy_pages:
        if not caps.features.lazy_pages:
            problems.append(
                "lazy pages need userfaultfd with non-cooperative events, which this kernel"
                f" does not offer (CRIU FEATURE_CHECK lazy_pages={_flag(caps.features.lazy_pages)})"
            )
        host = caps.host
        if not host.cap_sys_resource and host.pipe_max_size < LAZY_PAGES_PIPE_SIZE:
            problems.append(
                f"fs.pipe-max-size is {host.pipe_max_size}; CRIU's lazy page server needs"
                f" {LAZY_PAGES_PIPE_SIZE} without CAP_SYS_RESOURCE:"
                f" sysctl -w fs.pipe-max-size={LAZY_PAGES_PIPE_SIZE}"
            )
    return problems


def _flag(value: bool | None) -> str:
    return "unknown" if value is None else str(value).lower()


@dataclass(frozen=True, slots=True)
class _Probe:
    version: CriuVersion
    features: CriuFeatures


_probe_cache: dict[str, _Probe] = {}


def clear_capability_cache() -> None:
    """Forget what :func:`probe` learnt (tests; or after CRIU was replaced)."""
    _probe_cache.clear()


PROBE_CACHE_DIR = RUN_DIR
"""Where probe results are shared between shims (tmpfs: gone at reboot, like the answers)."""


def _probe_key(binary: str) -> str:
    """What a probe result depends on: the CRIU binary (path, inode, size, mtime), the
    running kernel and this boot."""
    st = os.stat(binary)
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{binary}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{os.uname().release}:{boot}"


def _probe_file(binary: str, cache_dir: str) -> str:
    # the interpreter's built-in SHA-256 (the same digest as hashlib's): importing hashlib
    # loads OpenSSL, ~2.4 ms of every checkpoint's and restore's shim
    from _sha256 import sha256  # type: ignore[import-not-found]

    return os.path.join(cache_dir, f"criu-{sha256(binary.encode()).hexdigest()[:16]}")


def _load_probe(binary: str, cache_dir: str) -> _Probe | None:
    import json

    try:
        with open(_probe_file(binary, cache_dir)) as f:
            doc = json.load(f)
        if doc.get("key") != _probe_key(binary):
            return None
        return _Probe(CriuVersion(**doc["version"]), CriuFeatures(**doc["features"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _store_probe(binary: str, cache_dir: str, found: _Probe) -> None:
    import json

    path = _probe_file(binary, cache_dir)
    tmp = f"{path}.{os.getpid()}"
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        doc = {
            "key": _probe_key(binary),
            "version": asdict(found.version),
            "features": asdict(found.features),
        }
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(doc, f)
        os.rename(tmp, path)


async def probe(
    criu: Criu, *, refresh: bool = False, cache_dir: str | None = None
) -> tuple[CriuVersion, CriuFeatures]:
    """Return CRIU's version and kernel features (mem_track, lazy_pages, pidfd_store).

    CRIU is asked (two ``criu swrk`` runs, tens of milliseconds) once per binary per boot:
    the answer is kept in this process and in ``cache_dir`` (default :data:`PROBE_CACHE_DIR`)
    for the next shims, keyed by the binary's identity, the kernel release and the boot id.
    ``refresh`` asks CRIU again.

    Raises:
        FailedPrecondition: CRIU cannot be run or does not answer VERSION (older than 3.0).
        CriuError: FEATURE_CHECK failed.
    """
    cache_dir = cache_dir or PROBE_CACHE_DIR
    cached = None if refresh else _probe_cache.get(criu.binary)
    if cached is None and not refresh:
        cached = _load_probe(criu.binary, cache_dir)
    if cached is None:
        try:
            version = await criu.version()
        except CriuRequestFailed as exc:
            raise FailedPrecondition(
                f"CRIU ({criu.binary}) does not answer a VERSION request; it is older than 3.0"
                " or broken"
            ) from exc
        features = await criu.features(mem_track=True, lazy_pages=True, pidfd_store=True)
        cached = _Probe(version, features)
        _store_probe(criu.binary, cache_dir, cached)
    _probe_cache[criu.binary] = cached
    return cached.version, cached.features


async def ensure_capable(
    criu: Criu, req: Requirements, *, host: HostFacts | None = None
) -> CriuCapabilities:
    """Check, before a checkpoint touches the container, that CRIU and the host can do it.

    Args:
        criu: the client of the CRIU binary that will run.
        req: what the operation needs.
        host: host facts to use (default: read now from /proc).
    Returns:
        The measured capabilities.
    Raises:
        FailedPrecondition: something is missing; the message names every missing capability.
    """
    version, features = await probe(criu)
    caps = CriuCapabilities(criu.binary, version, features, host or read_host_facts())
    problems = unmet_requirements(req, caps)
    if problems:
        raise FailedPrecondition("; ".join(problems))
    return caps


def criu_binary(path_option: str = "") -> str:
    """Resolve the CRIU executable: ``path_option`` (runc's ``CriuPath``) if set, else ``criu``
    found in PATH.

    Returns:
        An absolute path (or ``path_option`` as given when it contains a slash).
    Raises:
        FailedPrecondition: no executable found.
    """
    name = path_option or "criu"
    if "/" in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise FailedPrecondition(f"CRIU binary {name} does not exist or is not executable")
    search = os.environ.get("PATH") or os.defpath
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise FailedPrecondition(f"CRIU binary {name!r} not found in PATH ({search})")
