"""``pyrunc checkpoint --network-lock nftables|skip|iptables`` end to end: through the harness's
containerd with the io.containerd.pyrunc.v2 runtime, real runc 1.1 and real CRIU (>= 4.2.1).

Strategy: runc 1.1 has no flag for CRIU's network lock, so the shim writes ``network-lock M``
into the CRIU configuration file runc hands over (``<bundle>/criu.conf``, named by the
``org.criu.config`` annotation); ``iptables``, CRIU's default, writes nothing. Each test
checkpoints a running ``counter`` (its own network namespace, as ``ctr run`` makes it) and
leaves it running, then restores the images into a second container. What CRIU did is read
from the host, never asked of the shim:

* the container's network namespace is watched with ``nft monitor`` for the whole dump.
  Marker tables added and deleted by the test just before and just after the checkpoint
  prove the monitor was live and cut out exactly the events of the dump: a
  ``table inet CRIU-<run id>`` with drop policies for nftables, a ``CRIU`` chain in
  ``table ip filter`` for iptables (``iptables`` is the nf_tables backend here), nothing
  at all for skip;
* ``dump.log`` in ``--work-path``: CRIU parsed the shim's configuration file, locked and
  unlocked the network, and its run id names the nftables table. CRIU 4.2.1 never logs the
  method's name itself, so the log is read together with the monitor;
* ``inventory.img`` in the images: CRIU records the method it used (field 11,
  ``network_lock_method``: 0 iptables, 1 nftables, 2 skip) and a restore always uses that
  one (measured by hand: a restore with another ``network-lock`` in its configuration file
  still locked with the recorded method);
* the source goes on counting, unfrozen, and the restored counter goes on from the dumped
  number, with no CRIU table left in the restored network namespace.

Every test removes its containers (``containers`` fixture), its scratch directory and the
``nft monitor`` process; pyrunc checkpoints create no image records.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.checkpoint.criu import format_version
from shim.checkpoint.plan import CRIU_VERSION_NETWORK_LOCK

from ._opt_tools import criu_facts, log_lines, pyrunc
from .harness import (
    NAMESPACE,
    PYRUNC,
    Containers,
    Started,
    TaskStatus,
    WaitTimeout,
    freezer_state,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)

_NOTE = re.compile(r"pyrunc: note: \S+ was checkpointed; containerd stored no new blob \(.*\)")
INVENTORY_MAGIC = 0x58313116  # CRIU's inventory.img starts with it (criu/include/magic.h)
INVENTORY_NETWORK_LOCK = 11  # inventory_entry.network_lock_method (images/inventory.proto)
RECORDED = {"iptables": 0, "nftables": 1, "skip": 2}  # CRIU's enum NETWORK_LOCK_METHOD


@pytest.fixture(autouse=True)
def _criu_reads_network_lock() -> None:
    version, _ = criu_facts()
    if version.number < CRIU_VERSION_NETWORK_LOCK:
        pytest.skip(
            f"CRIU {version} crashes reading network-lock from runc's configuration file "
            f"(fixed in {format_version(CRIU_VERSION_NETWORK_LOCK)}); hack/install.sh builds "
            "a newer one"
        )


def nft(pid: int, *args: str) -> str:
    """``nft args`` in ``pid``'s network namespace; returns its output."""
    proc = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "nft", *args],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return proc.stdout


@dataclass
class Monitor:
    """``nft monitor`` running in a network namespace, writing its events to ``path``."""

    pid: int  # a process in the namespace
    path: Path

    def events(self) -> list[str]:
        """The event lines so far (``# new generation ... by process P (comm)`` included)."""
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def mark(self, name: str, timeout: float = 10) -> tuple[int, int]:
        """Add and delete ``table inet <name>``; wait until the monitor printed both.

        Returns:
            The indexes in :meth:`events` of the addition and of the line after the
            deletion: what happened in the namespace before or after the mark.
        """
        nft(self.pid, "add", "table", "inet", name)
        nft(self.pid, "delete", "table", "inet", name)
        made, gone = f"add table inet {name}", f"delete table inet {name}"
        events = wait_until(
            lambda: (e := self.events()) and made in e and gone in e and e,
            timeout,
            message=f"nft monitor to print {made!r} and {gone!r}",
        )
        return events.index(made), events.index(gone) + 1


@contextlib.contextmanager
def monitor(pid: int, path: Path) -> Iterator[Monitor]:
    """Watch ``pid``'s network namespace with ``nft monitor`` for the body."""
    with open(path, "wb") as out:
        proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{pid}/ns/net", "nft", "monitor"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        watch = Monitor(pid, path)
        # it has subscribed once it prints a change made after it started
        for attempt in range(40):
            assert proc.poll() is None, f"nft monitor ended: {watch.events()}"
            with contextlib.suppress(WaitTimeout):
                watch.mark(f"pyrunc_nl_ready{attempt}", timeout=0.5)
                break
        else:
            raise AssertionError(f"nft monitor printed nothing: {watch.events()}")
        yield watch
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def inventory_network_lock(images: Path) -> int | None:
    """``network_lock_method`` of the images' ``inventory.img`` (None if not recorded).

    The file is CRIU's magic (u32), the entry's size (u32), then one protobuf message.
    """
    data = (images / "inventory.img").read_bytes()
    magic, size = struct.unpack_from("<II", data)
    assert magic == INVENTORY_MAGIC, hex(magic)
    msg, pos, found = data[8 : 8 + size], 0, None

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = msg[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(msg):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if number == INVENTORY_NETWORK_LOCK:
                found = value
        elif wire == 2:
            length = varint()  # not "pos += varint()": that adds to the pos read before
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise AssertionError(f"inventory.img: wire type {wire} of field {number}")
    return found


def counted(started: Started) -> list[int]:
    return [int(x) for x in started.lines() if x.isdigit()]


def assert_done(proc: subprocess.CompletedProcess[str]) -> None:
    """The tool succeeded (at most containerd 1.6's duplicate-blob note on stderr)."""
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" or _NOTE.fullmatch(proc.stderr.strip()), proc.stderr


def _iptables_is_nft() -> bool:
    proc = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False)
    return "nf_tables" in proc.stdout


@pytest.mark.parametrize("method", ["nftables", "skip", "iptables"])
def test_network_lock_method_used_for_dump_and_restore(
    containers: Containers, scratch: Path, method: str
) -> None:
    if method == "iptables" and not _iptables_is_nft():
        pytest.skip("iptables is the legacy backend here: nft monitor cannot see its lock")
    src = containers.start(f"nl-{method}", "/usr/bin/counter", "50")
    wait_until(lambda: len(counted(src)) >= 3, message="the counter to count")
    images, work = scratch / "img", scratch / "work"
    bundle = containers.containerd.bundle(NAMESPACE, src.id)

    with monitor(src.pid, scratch / "nft-monitor.txt") as watch:
        _, start = watch.mark("pyrunc_nl_before")
        low = counted(src)[-1]  # the dumped counter had printed at least this ...
        proc = pyrunc(
            containers.containerd,
            "checkpoint",
            "-q",
            src.id,
            "--image-path",
            str(images),
            "--work-path",
            str(work),
            "--network-lock",
            method,
        )
        high = counted(src)[-1]  # ... and at most this
        end, _ = watch.mark("pyrunc_nl_after")
        during = watch.events()[start:end]  # between the marks: the dump
    assert_done(proc)
    changes = [e for e in during if not e.startswith("#")]
    # "# new generation N by process P (comm)" follows each change; the marks are by nft
    by = {m[1] for e in during if (m := re.search(r"by process \d+ \((.*)\)$", e))} - {"nft"}

    # what the shim handed to CRIU, and that CRIU read it
    config = bundle / "criu.conf"
    assert config.read_text() == ("" if method == "iptables" else f"network-lock {method}\n")
    dump_log = work / "dump.log"
    assert log_lines(dump_log, rf"Parsing config file {re.escape(str(config))}$")
    assert log_lines(dump_log, r"net: Lock network$")
    assert log_lines(dump_log, r"net: Unlock network$")  # the container was left running
    run_ids = [line.rsplit(" ", 1)[1] for line in log_lines(dump_log, r"CRIU run id = \S+$")]
    assert run_ids, "no CRIU run id in dump.log"

    # what CRIU did to the container's network namespace during the dump
    if method == "nftables":
        added = [m[1] for e in changes if (m := re.fullmatch(r"create table inet (CRIU-\S+)", e))]
        assert len(added) == 1, during
        table = added[0]
        assert run_ids[-1].startswith(table.removeprefix("CRIU-")), (table, run_ids)
        for hook in ("output", "input"):
            assert [e for e in changes if re.match(
                rf"add chain inet {table} {hook} {{ type filter hook {hook} .*policy drop;", e)
            ], (hook, during)  # fmt: skip
        assert f"delete table inet {table}" in changes, during
        assert by == {"criu"}, during
    elif method == "iptables":
        assert "create chain ip filter CRIU" in changes, during
        assert "delete chain ip filter CRIU" in changes, during
        assert not [e for e in changes if "inet CRIU-" in e], during
        assert by and "criu" not in by, during  # CRIU runs iptables-restore
    else:
        assert changes == [] and not by, during  # no lock at all
    assert inventory_network_lock(images) == RECORDED[method]

    # the source runs on, not frozen, with no CRIU rule left behind
    info = containers.ctr.task(src.id)
    assert info is not None and info.status is TaskStatus.RUNNING, info
    assert info.pid == src.pid and pid_alive(src.pid)
    assert freezer_state(src.pid) == "THAWED"
    assert "CRIU" not in nft(src.pid, "list", "ruleset")
    seen = len(counted(src))
    wait_until(lambda: len(counted(src)) >= seen + 3, message="the source to count on")

    # the images restore; CRIU takes the method from the inventory
    dst_id = containers.new_id(f"nl-{method}-restored")
    containers.ctr(
        "containers",
        "create",
        "--runtime",
        containers.runtime,
        containers.image,
        dst_id,
        "/usr/bin/counter",
        "50",
    )
    log = containers.logdir / f"{dst_id}.restored.log"
    rwork = scratch / "rwork"
    proc = pyrunc(
        containers.containerd,
        "restore",
        dst_id,
        "--image-path",
        str(images),
        "--work-path",
        str(rwork),
        "--detach",
        "--log-uri",
        f"file://{log}",
    )
    assert_done(proc)
    dst = Started(dst_id, int(proc.stdout), log)
    assert log_lines(rwork / "restore.log", r"net: Unlock network$")
    wait_until(lambda: len(counted(dst)) >= 3, message=lambda: f"the restored counter: "
               f"{dst.output()[-200:]!r}")  # fmt: skip
    values = counted(dst)
    assert values == list(range(values[0], values[0] + len(values))), values
    assert low < values[0] <= high + 1, (low, high, values[:3])  # on from the dumped number
    assert os.readlink(f"/proc/{dst.pid}/ns/net") != os.readlink(f"/proc/{src.pid}/ns/net")
    assert "CRIU" not in nft(dst.pid, "list", "ruleset")
