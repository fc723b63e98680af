"""Host facts and the compatibility check a migration runs before touching the container.

Strategy: :func:`host_facts` measures one host (CRIU's version and the features a method
needs, ``fs.pipe-max-size``, the kernel, free disk) by running ``criu`` (these are the agent's
and the migrate command's own short-lived children: neither is the daemon, whose children
go through its reaper). :func:`refusals` is pure: the facts of both sides and the method in,
the reasons to refuse out (empty = go). CPU features are compared by CRIU itself: the
source's ``criu cpuinfo dump`` image is checked on the destination with ``criu cpuinfo
check`` (:func:`cpuinfo_dump`, :func:`cpuinfo_check`): a restore on a CPU that lacks the
source's features would die with SIGILL.
"""

from __future__ import annotations

import enum
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Final

from shim.bundle import CRIU_CONFIG_ANNOTATION

__all__ = [
    "CPUINFO_IMAGE",
    "LAZY_PIPE_MAX_SIZE",
    "HostFacts",
    "Method",
    "cpuinfo_check",
    "cpuinfo_dump",
    "criu_config_refusal",
    "criu_log_refusal",
    "criu_version",
    "host_facts",
    "refusals",
]

LAZY_PIPE_MAX_SIZE: Final = 4 << 20  # CRIU's lazy page server pipe (lazy-migration.md)
CPUINFO_IMAGE: Final = "cpuinfo.img"
_TIMEOUT: Final = 60.0


class Method(enum.Enum):
    """How memory moves."""

    LAZY = "lazy"
    STOP_AND_COPY = "stop-and-copy"
    PRE_COPY = "pre-copy"


@dataclass(frozen=True, slots=True)
class HostFacts:
    """One host as a migration sees it."""

    kernel: str
    machine: str
    criu_version: int  # 40201 for 4.2.1; 0 = no CRIU
    lazy_pages: bool
    mem_dirty_track: bool
    pipe_max_size: int
    free_bytes: int
    hostname: str = ""
    # CRIU can lock the network with nftables; None = not reported (an agent older than
    # HostFacts.nftables_lock, or one that reported it as a plain proto3 bool: false)
    nftables_lock: bool | None = False
    # CRIU can secure its page server's connection with TLS (built with GnuTLS); None = not
    # reported (an agent older than HostFacts.criu_tls)
    criu_tls: bool | None = False


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL)


_VERSION = re.compile(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?")


def criu_version(text: str) -> int:
    """``criu --version`` output as CRIU's number (4.2.1 -> 40201; 0 when unreadable)."""
    m = _VERSION.search(text)
    if m is None:
        return 0
    return int(m[1]) * 10000 + int(m[2]) * 100 + int(m[3] or 0)


def _feature(criu: str, name: str) -> bool:
    return _run([criu, "check", "--feature", name]).returncode == 0


def _tls(criu: str) -> bool:
    """CRIU was built with GnuTLS: ``criu check --tls`` (with one cheap feature check, so
    that nothing else is checked). Built without, CRIU refuses ``--tls`` after reading its
    options ("CRIU was built without TLS support"), which ``criu --help`` does not show: it
    lists the TLS options either way."""
    proc = _run([criu, "check", "--tls", "--feature", "mnt_id"])
    return proc.returncode == 0 and "without TLS" not in proc.stdout + proc.stderr


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def host_facts(criu: str, stage_dir: str) -> HostFacts:
    """Measure this host; ``stage_dir`` is where images would go (its free space counts)."""
    path = shutil.which(criu)
    version = criu_version(_run([path, "--version"]).stdout) if path else 0
    probe = stage_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    uname = platform.uname()
    return HostFacts(
        kernel=uname.release,
        machine=uname.machine,
        criu_version=version,
        lazy_pages=bool(path) and _feature(path or criu, "uffd-noncoop"),
        mem_dirty_track=bool(path) and _feature(path or criu, "mem_dirty_track"),
        pipe_max_size=_pipe_max_size(),
        free_bytes=st.f_bavail * st.f_frsize,
        hostname=socket.gethostname(),
        nftables_lock=bool(path) and _feature(path or criu, "network_lock_nftables"),
        criu_tls=bool(path) and _tls(path or criu),
    )


def cpuinfo_dump(criu: str) -> bytes:
    """``criu cpuinfo dump``: this CPU's features as CRIU's image (b"" when CRIU cannot)."""
    with tempfile.TemporaryDirectory(prefix="pyrunc-cpuinfo-") as d:
        if _run([criu, "cpuinfo", "dump", "-D", d]).returncode != 0:
            return b""
        with open(os.path.join(d, CPUINFO_IMAGE), "rb") as f:
            return f.read()


def cpuinfo_check(criu: str, image: bytes) -> str:
    """``criu cpuinfo check`` of another host's cpuinfo image here: "" when this CPU can run
    what that one dumped, else CRIU's reason."""
    if not image:
        return ""
    with tempfile.TemporaryDirectory(prefix="pyrunc-cpuinfo-") as d:
        with open(os.path.join(d, CPUINFO_IMAGE), "wb") as f:
            f.write(image)
        proc = _run([criu, "cpuinfo", "check", "-D", d, "-o", os.path.join(d, "check.log")])
        if proc.returncode == 0:
            return ""
        try:
            with open(os.path.join(d, "check.log"), errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if "Error" in ln]
        except OSError:
            lines = []
        detail = lines[-1] if lines else (proc.stderr.strip() or f"status {proc.returncode}")
        return f"CPU features differ (criu cpuinfo check: {detail})"


CRIU_INFO_LEVEL: Final = 3  # CRIU's pr_info lines; runc asks for 4 and names dump.log


def criu_log_refusal(config: str, needs: str) -> str:
    """Why a move that reads CRIU's dump log for ``needs`` cannot go when the dump's CRIU
    configuration file starts with ``config`` (runc's default CRIU configuration, which the
    shim puts in front of its own options, and which CRIU reads after runc's log level and
    log file), or "". CRIU would write that log elsewhere (``log-file``) or without its
    info lines (``verbosity`` below :data:`CRIU_INFO_LEVEL`, or a bare ``verbosity``, whose
    level depends on what came before)."""
    for raw in config.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.replace("=", " ", 1).partition(" ")
        key, value = key.lstrip("-"), value.strip()
        if key in ("log-file", "o") or (key in ("verbosity", "v") and not (
                value.isdigit() and int(value) >= CRIU_INFO_LEVEL)):
            return (f"the CRIU configuration the dump reads says {line!r}: the move reads "
                    f"CRIU's dump log (info level, in its work directory) for {needs}")
    return ""


def criu_config_refusal(annotations: dict[str, Any]) -> str:
    """Why a container whose spec has ``annotations`` cannot move, or "": one that names its
    own CRIU configuration file (``org.criu.config``). runc hands CRIU the file that
    annotation names, and the shim writes the options runc has no flag for (every move asks
    for CRIU's nftables network lock, and TLS for its page server) into the per-operation
    file it names itself at create; with the container's own file named instead, the shim
    refuses those options and the dump would fail, after the pause."""
    named = annotations.get(CRIU_CONFIG_ANNOTATION)
    if named is None:
        return ""
    return (f"the container names its own CRIU configuration ({CRIU_CONFIG_ANNOTATION}="
            f"{named!r}): a move passes CRIU options runc has no flag for (the nftables "
            "network lock, TLS for the page server) in the shim's own configuration file, "
            "which that annotation replaces")


def _version_text(v: int) -> str:
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def refusals(source: HostFacts, dest: HostFacts, method: Method, bytes_needed: int, *,
             page_server_tls: bool = False) -> list[str]:
    """Reasons not to migrate from ``source`` to ``dest`` by ``method`` (empty = go);
    ``page_server_tls``: the move secures CRIU's page-server connection with TLS."""
    out: list[str] = []
    for side, facts in (("source", source), ("destination", dest)):
        if facts.criu_version == 0:
            out.append(f"{side} has no CRIU")
    if source.machine != dest.machine:
        out.append(f"architectures differ: source {source.machine}, destination {dest.machine}")
    if source.criu_version and dest.criu_version and dest.criu_version < source.criu_version:
        out.append(f"destination CRIU {_version_text(dest.criu_version)} is older than the "
                   f"source's {_version_text(source.criu_version)}")
    for side, facts in (("source", source), ("destination", dest)):
        if facts.criu_version and facts.nftables_lock is None:
            out.append(f"the {side} reports no CRIU nftables network lock (criu check "
                       "--feature network_lock_nftables; an agent older than that check "
                       "reports none: update it); every move asks CRIU for it")
        elif facts.criu_version and not facts.nftables_lock:
            out.append(f"{side} CRIU cannot lock the network with nftables (criu check "
                       "--feature network_lock_nftables fails: CRIU built without "
                       "libnftables, or a kernel without nftables set concatenation); "
                       "every move asks CRIU for it")
    for side, facts in (("source", source), ("destination", dest)):
        if not (page_server_tls and facts.criu_version) or facts.criu_tls:
            continue
        if facts.criu_tls is None:
            out.append(f"the {side} reports no CRIU TLS support (criu check --tls; an agent "
                       "older than that check reports none: update it); a move over TCP with "
                       "mutual TLS secures CRIU's page server with it")
        else:
            out.append(f"{side} CRIU has no TLS (criu check --tls fails: CRIU built without "
                       "GnuTLS); a move over TCP with mutual TLS secures CRIU's page server "
                       "with it")
    if method is Method.LAZY:
        for side, facts in (("source", source), ("destination", dest)):
            if not facts.lazy_pages:
                out.append(f"{side} cannot do lazy pages: userfaultfd (criu check --feature "
                           "uffd-noncoop) is missing")
        if source.pipe_max_size < LAZY_PIPE_MAX_SIZE:
            out.append(f"source fs.pipe-max-size is {source.pipe_max_size}, lazy pages need "
                       f">= {LAZY_PIPE_MAX_SIZE} (sysctl -w fs.pipe-max-size={LAZY_PIPE_MAX_SIZE})")
    if method is Method.PRE_COPY:
        for side, facts in (("source", source), ("destination", dest)):
            if not facts.mem_dirty_track:
                out.append(f"pre-copy is impossible: the {side} kernel ({facts.kernel}) has no "
                           "soft-dirty memory tracking (criu check --feature mem_dirty_track "
                           "fails), so CRIU refuses pre-dump")
                break
    if dest.free_bytes < bytes_needed:
        out.append(f"destination has {dest.free_bytes} bytes free, the move needs {bytes_needed}")
    return out
