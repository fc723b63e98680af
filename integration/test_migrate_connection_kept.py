"""A move that fails at the destination keeps the container's TCP connections on the source.

Strategy: net-seq in the container on host a, a client in a third namespace exchanging
numbered, hashed records with it over one connection (as ``test_migrate``'s connection test);
the move to b with ``--tcp-established`` fails inside CRIU's restore on b (the host-side veth
name is taken there, so the network rebuild refuses). The source must run on, and the same
connection must carry records both ways afterwards: a failed move may cost the client a
pause, never its connection (the container's only peer here; losing it ends net-seq).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._migrate_lab import World, start_in, two_hosts
from .harness import PYRUNC, TaskStatus

pytestmark = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)


@pytest.fixture
def world(tmp_path: Path, runtime: str) -> Iterator[World]:
    with two_hosts(tmp_path) as w:
        yield w


@pytest.mark.parametrize("method", ["stop-and-copy", "lazy"])
def test_a_failed_move_keeps_the_connection_on_the_source(world: World, method: str) -> None:
    from ._net_seq import SeqClient, established

    port = 7000
    cid, _ = start_in(world, world.a, "mig-keep", "/usr/bin/net-seq", str(port), wired=True)
    client = SeqClient.connect(world.client_ns, f"{world.subnet}.2", port)
    try:
        client.exchange(20)
        endpoint = (client.local, client.peer)
        squatter = world.lab.netns("sq")
        world.lab.veth(world.lab.name("vs"), squatter, netns=world.b.netns)  # taken on b
        proc = world.migrate(cid, world.a, world.b, "--tcp-established", method=method)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "already exists" in proc.stderr, proc.stderr
        assert "the source runs on (RUNNING)" in proc.stderr, proc.stderr
        client.exchange(20)  # raises if the connection broke or a record came back wrong
        assert (client.local, client.peer) == endpoint
        assert established(world.client_ns, port) == [
            (f"{client.local[0]}:{client.local[1]}", f"{world.subnet}.2:{port}")]
        assert world.a.status(cid) is TaskStatus.RUNNING
        assert world.b.status(cid) is None and cid not in world.b.containers()
    finally:
        client.close()
