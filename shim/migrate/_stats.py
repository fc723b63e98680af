"""CRIU's statistics files (``stats-dump``, ``stats-restore``) and the migration report.

Strategy: sans-IO. :func:`parse_stats` takes the bytes of a stats file - two magic words
(CRIU's service-image magic, then the stats magic), a little-endian u32 length and one
``StatsEntry`` message (CRIU ``images/stats.proto``: ``dump`` = field 1, ``restore`` =
field 2) - and decodes the protobuf wire format by hand (varints and nested messages only),
so no CRIU proto is compiled for two flat messages. :class:`Report` is the final report;
:meth:`Report.to_json` lays it out as Podman's ``--print-stats`` does (times in
microseconds, CRIU's field names) plus a ``migration`` object.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DumpStats",
    "Outcome",
    "Report",
    "RestoreStats",
    "StatsError",
    "count_lazy_pages",
    "parse_stats",
]

_HEADER = struct.Struct("<III")  # service magic, stats magic, entry length
_DUMP_FIELDS = {
    1: "freezing_time", 2: "frozen_time", 3: "memdump_time", 4: "memwrite_time",
    5: "pages_scanned", 6: "pages_skipped_parent", 7: "pages_written", 8: "irmap_resolve",
    9: "pages_lazy", 10: "page_pipes", 11: "page_pipe_bufs", 12: "shpages_scanned",
    13: "shpages_skipped_parent", 14: "shpages_written",
}
_RESTORE_FIELDS = {
    1: "pages_compared", 2: "pages_skipped_cow", 3: "forking_time", 4: "restore_time",
    5: "pages_restored",
}


class StatsError(ValueError):
    """A stats file that is not one (truncated, bad wire format)."""


@dataclass(frozen=True, slots=True)
class DumpStats:
    """CRIU's ``dump_stats_entry`` (times in microseconds)."""

    freezing_time: int = 0
    frozen_time: int = 0
    memdump_time: int = 0
    memwrite_time: int = 0
    pages_scanned: int = 0
    pages_skipped_parent: int = 0
    pages_written: int = 0
    irmap_resolve: int = 0
    pages_lazy: int = 0
    page_pipes: int = 0
    page_pipe_bufs: int = 0
    shpages_scanned: int = 0
    shpages_skipped_parent: int = 0
    shpages_written: int = 0


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """CRIU's ``restore_stats_entry`` (times in microseconds)."""

    pages_compared: int = 0
    pages_skipped_cow: int = 0
    forking_time: int = 0
    restore_time: int = 0
    pages_restored: int = 0


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise StatsError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise StatsError("varint longer than 10 bytes")


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Top-level fields of one message: varints as ints, length-delimited as bytes
    (a repeated field keeps its last value, as protobuf does for scalars)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise StatsError(f"field {number}: {length} bytes declared, {len(buf) - pos} left")
            out[number] = buf[pos:pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise StatsError(f"field {number}: wire type {wire} not expected in stats")
    if pos != len(buf):
        raise StatsError("message ends inside a field")
    return out


def _ints(buf: bytes, names: dict[int, str]) -> dict[str, int]:
    return {names[n]: v for n, v in _fields(buf).items() if n in names and isinstance(v, int)}


def parse_stats(data: bytes) -> tuple[DumpStats | None, RestoreStats | None]:
    """The dump and restore entries of a ``stats-dump``/``stats-restore`` file.

    Raises:
        StatsError: the bytes are not a stats file.
    """
    if len(data) < _HEADER.size:
        raise StatsError(f"{len(data)} bytes: shorter than a stats header")
    _, _, length = _HEADER.unpack_from(data)
    body = data[_HEADER.size:_HEADER.size + length]
    if len(body) != length:
        raise StatsError(f"entry of {length} bytes declared, {len(body)} present")
    top = _fields(body)
    dump = top.get(1)
    restore = top.get(2)
    return (
        DumpStats(**_ints(dump, _DUMP_FIELDS)) if isinstance(dump, bytes) else None,
        RestoreStats(**_ints(restore, _RESTORE_FIELDS)) if isinstance(restore, bytes) else None,
    )


_PAGEMAP_MAGICS = 8  # CRIU's common image magic, then the pagemap magic
_PE_LAZY = 1 << 1     # pagemap_entry flags (CRIU images/pagemap.proto)
_LEN = struct.Struct("<I")


def count_lazy_pages(data: bytes) -> int:
    """Pages a ``pagemap-<pid>.img`` leaves to be served lazily (entries flagged PE_LAZY).

    The first entry is the pagemap head; each later one has ``flags`` (field 4) and the page
    count (``nr_pages``, field 2, or, as CRIU 4.2 writes it, field 5).

    Raises:
        StatsError: the bytes are not a pagemap image.
    """
    pos, total, first = _PAGEMAP_MAGICS, 0, True
    if len(data) < pos:
        raise StatsError("shorter than an image header")
    while pos < len(data):
        if pos + _LEN.size > len(data):
            raise StatsError("truncated entry length")
        (length,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        body = data[pos:pos + length]
        if len(body) != length:
            raise StatsError(f"entry of {length} bytes declared, {len(body)} present")
        pos += length
        if first:
            first = False
            continue
        f = _fields(body)
        flags, pages = f.get(4, 0), f.get(5) or f.get(2, 0)
        if isinstance(flags, int) and isinstance(pages, int) and flags & _PE_LAZY:
            total += pages
    return total


class Outcome(enum.Enum):
    """How a migration ended."""

    MIGRATED = "migrated"            # the container runs on the destination only
    KEPT_SOURCE = "kept-source"      # it runs on the destination; --keep-source kept the record
    REFUSED = "refused"              # a check failed; nothing was touched
    ROLLED_BACK = "rolled-back"      # failed before the destination ran; the source runs on
    POSTCOPY_FAILED = "postcopy-failed"  # the destination ran but lost pages afterwards


@dataclass(frozen=True, slots=True)
class Report:
    """What ``pyrunc migrate`` prints at the end."""

    container_id: str
    method: str
    outcome: Outcome
    dump: DumpStats | None = None
    restore: RestoreStats | None = None
    checkpoint_us: int = 0
    restore_us: int = 0
    downtime_us: int = 0
    transfer_bytes: int = 0
    postcopy_complete_us: int = 0
    total_us: int = 0
    message: str = ""
    # (name, microseconds) in the order they happened: where the time went; the names of
    # the frozen window's phases start with "frozen:" and add up to downtime_us
    phases: tuple[tuple[str, int], ...] = ()
    # the source's CRIU completed a TLS handshake on the page server's connection (its log)
    page_server_tls: bool = False

    def to_json(self) -> dict[str, Any]:
        """Podman's ``--print-stats`` layout plus ``migration``."""
        dump = self.dump or DumpStats()
        restore = self.restore or RestoreStats()
        restore_stats: dict[str, int] = {
            "forking_time": restore.forking_time,
            "restore_time": restore.restore_time,
            "pages_restored": restore.pages_restored,
        }
        if restore.pages_compared:
            restore_stats["pages_compared"] = restore.pages_compared
        if restore.pages_skipped_cow:
            restore_stats["pages_skipped_cow"] = restore.pages_skipped_cow
        return {
            "podman_checkpoint_duration": self.checkpoint_us,
            "podman_restore_duration": self.restore_us,
            "container_statistics": [{
                "Id": self.container_id,
                "runtime_checkpoint_duration": self.checkpoint_us,
                "runtime_restore_duration": self.restore_us,
                "criu_statistics": {
                    "freezing_time": dump.freezing_time,
                    "frozen_time": dump.frozen_time,
                    "memdump_time": dump.memdump_time,
                    "memwrite_time": dump.memwrite_time,
                    "pages_scanned": dump.pages_scanned,
                    "pages_written": dump.pages_written,
                    "pages_lazy": dump.pages_lazy,
                    **restore_stats,
                },
            }],
            "migration": {
                "method": self.method,
                "downtime_us": self.downtime_us,
                "transfer_bytes": self.transfer_bytes,
                "postcopy_complete_us": self.postcopy_complete_us,
                "pages_lazy": dump.pages_lazy,
                "total_us": self.total_us,
                "outcome": self.outcome.value,
                "message": self.message,
                "phases": dict(self.phases),
                "page_server_tls": self.page_server_tls,
            },
        }
