"""shim.migrate._stats: CRIU's stats and pagemap images decoded, the report's JSON layout."""

from __future__ import annotations

import pytest

from shim.migrate._stats import (
    DumpStats,
    Outcome,
    Report,
    RestoreStats,
    StatsError,
    count_lazy_pages,
    parse_stats,
)

# stats-dump of `criu dump` (4.2.1) of a `sleep`, recorded on this project's test machine
STATS_DUMP = bytes.fromhex(
    "4059105506330957230000000a2108c30110c4c90118830620960128393000381e4000480050065806600068"
    "007000")
# pagemap-<pid>.img of the same dump: head, then entries (vaddr, nr_pages 0, flags, and the
# count in field 5); flags 6 = PE_LAZY|PE_PRESENT (4 + 2 + 1 + 3 + 1 + 1 + 3 = 15 pages)
PAGEMAP = bytes.fromhex(
    "19435654254008560200000008010e000000088080edc58db9151000200428010e0000000880e0eec58db915"
    "1000200428020e0000000880a0818a8fb9151000200628040e0000000880e0d4c1bff11f1000200628020e00"
    "00000880a0c9c2bff11f1000200428060e0000000880e0cac2bff11f1000200628010e0000000880e0cbc2bf"
    "f11f1000200628030e0000000880e0cdc2bff11f1000200628010e0000000880a0d0c2bff11f100020062801"
    "0e0000000880a0d2c2bff11f1000200428020e000000088080dfc2bff11f1000200428040e0000000880a0d9"
    "dee3ff1f100020062803")


def test_recorded_stats_dump() -> None:
    dump, restore = parse_stats(STATS_DUMP)
    assert restore is None
    assert dump == DumpStats(freezing_time=195, frozen_time=25796, memdump_time=771,
                             memwrite_time=150, pages_scanned=57, pages_written=30,
                             page_pipes=6, page_pipe_bufs=6)


def test_restore_entry() -> None:
    # StatsEntry{restore: {pages_compared 0, pages_skipped_cow 0, forking_time 2,
    # restore_time 222267, pages_restored 8}}
    entry = bytes.fromhex("080010001802" "20bbc80d" "2808")
    body = bytes([0x12, len(entry)]) + entry
    data = bytes.fromhex("40591055" "06330957") + len(body).to_bytes(4, "little") + body
    dump, restore = parse_stats(data)
    assert dump is None
    assert restore == RestoreStats(forking_time=2, restore_time=222267, pages_restored=8)


@pytest.mark.parametrize("cut", [0, 5, 11, 12, 20, len(STATS_DUMP) - 1])
def test_truncated_stats_refused(cut: int) -> None:
    with pytest.raises(StatsError):
        parse_stats(STATS_DUMP[:cut])


def test_bad_wire_type_refused() -> None:
    body = bytes([0x0B, 0x00])  # field 1, wire type 3 (group start)
    with pytest.raises(StatsError):
        parse_stats(b"\0" * 8 + len(body).to_bytes(4, "little") + body)


def test_lazy_pages_counted_from_a_recorded_pagemap() -> None:
    assert count_lazy_pages(PAGEMAP) == 15


@pytest.mark.parametrize("cut", [3, 13, len(PAGEMAP) - 1])
def test_truncated_pagemap_refused(cut: int) -> None:
    with pytest.raises(StatsError):
        count_lazy_pages(PAGEMAP[:cut])


def test_report_in_podmans_layout_plus_migration() -> None:
    report = Report(
        container_id="c1", method="lazy", outcome=Outcome.MIGRATED,
        dump=DumpStats(freezing_time=1, frozen_time=2, memdump_time=3, memwrite_time=4,
                       pages_scanned=5, pages_written=6, pages_lazy=7),
        restore=RestoreStats(forking_time=8, restore_time=9, pages_restored=10),
        checkpoint_us=11, restore_us=12, downtime_us=13, transfer_bytes=14,
        postcopy_complete_us=15, total_us=16,
        phases=(("prepare-wait", 17), ("frozen:dump", 18), ("frozen:agent:task-start", 19)),
        page_server_tls=True)
    assert report.to_json() == {
        "podman_checkpoint_duration": 11,
        "podman_restore_duration": 12,
        "container_statistics": [{
            "Id": "c1",
            "runtime_checkpoint_duration": 11,
            "runtime_restore_duration": 12,
            "criu_statistics": {
                "freezing_time": 1, "frozen_time": 2, "memdump_time": 3, "memwrite_time": 4,
                "pages_scanned": 5, "pages_written": 6, "pages_lazy": 7,
                "forking_time": 8, "restore_time": 9, "pages_restored": 10,
            },
        }],
        "migration": {
            "method": "lazy", "downtime_us": 13, "transfer_bytes": 14,
            "postcopy_complete_us": 15, "pages_lazy": 7, "total_us": 16,
            "outcome": "migrated", "message": "",
            "phases": {"prepare-wait": 17, "frozen:dump": 18, "frozen:agent:task-start": 19},
            "page_server_tls": True,
        },
    }


def test_report_adds_restore_counters_only_when_not_zero() -> None:
    r = Report("c", "stop-and-copy", Outcome.MIGRATED,
               restore=RestoreStats(pages_compared=3, pages_skipped_cow=0))
    stats = r.to_json()["container_statistics"][0]["criu_statistics"]
    assert stats["pages_compared"] == 3 and "pages_skipped_cow" not in stats
