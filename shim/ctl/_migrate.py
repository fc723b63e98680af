"""``pyrunc migrate`` and ``pyrunc agent``: the command values, their parsers, running them.

Strategy: as ``_cri``: parsers and frozen commands here, so ``_args`` and ``_main`` need a
line each; :mod:`shim.migrate` (grpc) is imported only when one of these commands runs.
Progress goes to stderr, and only on a terminal; the final report to stdout (``--json``:
Podman's ``--print-stats`` layout plus ``migration``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from shim.warm import RUN_DIR

if TYPE_CHECKING:
    from shim.migrate import Progress, Report

__all__ = [
    "DEFAULT_AGENT_SOCKET",
    "DEFAULT_MIGRATE_WORK_DIR",
    "AgentCommand",
    "MigrateCommand",
    "add_migrate_parsers",
    "migrate_command",
    "run_migrate",
]

DEFAULT_AGENT_SOCKET: Final = f"unix://{RUN_DIR}/agent.sock"
DEFAULT_MIGRATE_WORK_DIR: Final = "/var/lib/containerd-shim-pyrunc/migrate"
METHODS: Final = ("lazy", "stop-and-copy", "pre-copy")


@dataclass(frozen=True, slots=True)
class MigrateCommand:
    """``pyrunc migrate ID --to ADDRESS``."""

    address: str
    namespace: str
    container_id: str
    to: str
    method: str = "lazy"
    tcp_established: bool = False
    keep_source: bool = False
    json: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure_tcp: bool = False
    work_dir: str = DEFAULT_MIGRATE_WORK_DIR
    page_server_address: str = ""
    plain_page_server: bool = False


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """``pyrunc agent``."""

    address: str
    listen: tuple[str, ...]
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure_tcp: bool = False
    work_dir: str = DEFAULT_MIGRATE_WORK_DIR
    criu: str = "criu"
    runtime_root: str = ""
    cgroup_parent: str = ""
    verbose: bool = False


def _tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default="", metavar="PEM", help="this side's certificate")
    p.add_argument("--tls-key", default="", metavar="PEM", help="its private key")
    p.add_argument("--tls-ca", default="", metavar="PEM",
                   help="the CA that must have signed the peer's certificate")
    p.add_argument("--insecure-tcp", action="store_true",
                   help="allow TCP without TLS (anyone reaching it can run containers)")


def add_migrate_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` and ``agent`` to the ``pyrunc`` subcommands."""
    m = sub.add_parser(
        "migrate", help="move a running container to another host's `pyrunc agent`",
        description="Move container ID to the host whose `pyrunc agent` listens at ADDRESS "
        "(unix:///PATH, or HOST:PORT with mutual TLS). Checks both hosts first and refuses "
        "with the reason; any failure before the destination runs leaves the container "
        "running here. Exit status: 0 moved, 1 failed or refused (the message says where "
        "the container is), 3 the destination died during post-copy.")
    m.add_argument("container_id", metavar="ID")
    m.add_argument("--to", required=True, metavar="ADDRESS", help="the destination agent")
    m.add_argument("--method", choices=METHODS, default="lazy",
                   help="lazy (post-copy, default), stop-and-copy, or pre-copy (refused "
                   "without soft-dirty memory tracking)")
    m.add_argument("--tcp-established", action="store_true",
                   help="move established TCP connections with the container")
    m.add_argument("--keep-source", action="store_true",
                   help="keep the source's container record and rootfs snapshot "
                   "(stop-and-copy only; its task is removed)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    m.add_argument("--work-dir", default=DEFAULT_MIGRATE_WORK_DIR, metavar="DIR",
                   help=f"where the dump is staged (default: {DEFAULT_MIGRATE_WORK_DIR})")
    m.add_argument("--page-server-address", default="", metavar="IP",
                   help="this host's address the destination fetches lazy pages from "
                   "(default: the local address of the route to the agent)")
    m.add_argument("--plain-page-server", action="store_true",
                   help="CRIU's page server without TLS even over mutual TLS (faster "
                   "stop-and-copy; anyone who reaches it can read or write the memory)")
    _tls_args(m)
    a = sub.add_parser(
        "agent", help="receive migrated containers (serve until SIGTERM)",
        description="Serve migrations into this host's containerd (the one -a names).")
    a.add_argument("--listen", action="append", metavar="ADDRESS",
                   help=f"unix:///PATH or HOST:PORT, repeatable (default: "
                   f"{DEFAULT_AGENT_SOCKET}); TCP needs --tls-* or --insecure-tcp")
    a.add_argument("--work-dir", default=DEFAULT_MIGRATE_WORK_DIR, metavar="DIR",
                   help="where incoming images are staged and restored tasks log")
    a.add_argument("--criu", default="criu", metavar="PATH")
    a.add_argument("--runtime-root", default="", metavar="DIR",
                   help="runc's state root for restored containers on this host (default: "
                   "the one the source used)")
    a.add_argument("--cgroup-parent", default="", metavar="PATH",
                   help="put restored containers' cgroups under PATH (default: the path the "
                   "source used)")
    a.add_argument("-v", "--verbose", action="store_true")
    _tls_args(a)


def migrate_command(ns: argparse.Namespace, address: str,
                    namespace: str) -> MigrateCommand | AgentCommand:
    """The command value of parsed ``migrate``/``agent`` arguments."""
    tls = {"tls_cert": ns.tls_cert, "tls_key": ns.tls_key, "tls_ca": ns.tls_ca,
           "insecure_tcp": ns.insecure_tcp}
    if ns.command == "agent":
        return AgentCommand(address=address, listen=tuple(ns.listen or [DEFAULT_AGENT_SOCKET]),
                            work_dir=ns.work_dir, criu=ns.criu, runtime_root=ns.runtime_root,
                            cgroup_parent=ns.cgroup_parent,
                            verbose=ns.verbose, **tls)
    return MigrateCommand(address=address, namespace=namespace, container_id=ns.container_id,
                          to=ns.to, method=ns.method, tcp_established=ns.tcp_established,
                          keep_source=ns.keep_source, json=ns.json, work_dir=ns.work_dir,
                          page_server_address=ns.page_server_address,
                          plain_page_server=ns.plain_page_server, **tls)


def _tls(cmd: MigrateCommand | AgentCommand) -> Any:
    from shim.migrate import Refused, TlsFiles

    given = [cmd.tls_cert, cmd.tls_key, cmd.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise Refused("--tls-cert, --tls-key and --tls-ca go together")
    return TlsFiles(cert=cmd.tls_cert, key=cmd.tls_key, ca=cmd.tls_ca)


def _show(p: Progress) -> None:
    line = (f"\r{p.phase:<12} {p.sent / 2**20:9.1f} MiB sent  {p.pages:8d} pages dumped  "
            f"{p.rate / 2**20:7.1f} MiB/s")
    print(line, end="", file=sys.stderr, flush=True)


def _notice(text: str) -> None:
    start = "\n" if sys.stderr.isatty() else ""  # after the progress line
    print(f"{start}pyrunc: {text}", file=sys.stderr, flush=True)


def _text(r: Report) -> str:
    d = r.to_json()
    m = d["migration"]
    c = d["container_statistics"][0]["criu_statistics"]
    lines = [
        f"{r.container_id}: {m['outcome']} ({m['method']})",
        f"  downtime        {m['downtime_us'] / 1e3:10.1f} ms",
        f"  total           {m['total_us'] / 1e3:10.1f} ms",
        f"  transferred     {m['transfer_bytes'] / 2**20:10.1f} MiB",
        f"  pages written   {c['pages_written']:10d}   lazy {c['pages_lazy']}",
        f"  frozen (CRIU)   {c['frozen_time'] / 1e3:10.1f} ms   restore "
        f"{c['restore_time'] / 1e3:.1f} ms",
    ]
    if m["postcopy_complete_us"]:
        lines.append(f"  post-copy done  {m['postcopy_complete_us'] / 1e3:10.1f} ms after "
                     "the destination ran")
    if r.message:
        lines.append(f"  {r.message}")
    return "\n".join(lines)


def run_migrate(cmd: MigrateCommand | AgentCommand) -> int:
    """Run ``migrate`` or ``agent``; returns the exit status."""
    from pathlib import Path

    from shim.migrate import (  # grpc: loaded only for these commands
        AgentConfig,
        Method,
        MigrateError,
        MigrateOptions,
        Outcome,
        Progress,
        migrate,
        serve,
    )

    try:
        if isinstance(cmd, AgentCommand):
            logging.basicConfig(level=logging.DEBUG if cmd.verbose else logging.INFO,
                                format="pyrunc agent: %(levelname)s %(message)s")
            return serve(AgentConfig(listen=cmd.listen, containerd=cmd.address,
                                     work_dir=Path(cmd.work_dir), criu=cmd.criu,
                                     tls=_tls(cmd), insecure_tcp=cmd.insecure_tcp,
                                     runtime_root=cmd.runtime_root,
                                     cgroup_parent=cmd.cgroup_parent))
        if cmd.plain_page_server:
            print("pyrunc: --plain-page-server: CRIU's page server speaks plain TCP in this "
                  "move: anyone who reaches it can read (lazy) or write (stop-and-copy) the "
                  "container's memory", file=sys.stderr)
        progress = (Progress(show=_show, notice=_notice) if sys.stderr.isatty()
                    else Progress(notice=_notice))
        report = migrate(MigrateOptions(
            containerd=cmd.address, namespace=cmd.namespace, container_id=cmd.container_id,
            to=cmd.to, method=Method(cmd.method), tcp_established=cmd.tcp_established,
            keep_source=cmd.keep_source, tls=_tls(cmd), insecure_tcp=cmd.insecure_tcp,
            work_dir=cmd.work_dir, page_server_address=cmd.page_server_address,
            plain_page_server=cmd.plain_page_server), progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
    except MigrateError as exc:
        print(f"pyrunc: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=1) if cmd.json else _text(report))
    return 3 if report.outcome is Outcome.POSTCOPY_FAILED else 0
