"""Live migration of a container between two containerd hosts (``pyrunc migrate``, ``pyrunc
agent``): compatibility checks, the transfer, the report.

Strategy: grpc lives here and in ``shim.ctl``/``shim.cri`` only (the daemon never imports
this package). Modules: ``_checks`` (host facts, refusals), ``_precopy`` (P.Haul's round
rules), ``_stats`` (CRIU stats files, the report), ``_transfer`` (tar streams),
``_tls`` (addresses, mutual TLS), ``_containerd`` (the containerd calls), ``_agent`` (the
destination), ``_source`` (the source).
"""

from __future__ import annotations

from ._agent import AgentConfig, serve
from ._checks import HostFacts, Method, refusals
from ._errors import ContainerdError, MigrateError, Refused, TransferFailed
from ._precopy import Decision, Stop, next_round, rounds
from ._source import MigrateOptions, Progress, migrate
from ._stats import DumpStats, Outcome, Report, RestoreStats, parse_stats
from ._tls import TlsFiles

__all__ = [
    "AgentConfig",
    "ContainerdError",
    "Decision",
    "DumpStats",
    "HostFacts",
    "Method",
    "MigrateError",
    "MigrateOptions",
    "Outcome",
    "Progress",
    "Refused",
    "Report",
    "RestoreStats",
    "Stop",
    "TlsFiles",
    "TransferFailed",
    "migrate",
    "next_round",
    "parse_stats",
    "refusals",
    "rounds",
    "serve",
]
