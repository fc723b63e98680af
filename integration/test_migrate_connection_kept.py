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


def test_a_source_put_back_after_post_copy_failed_takes_its_connection_again(
        world: World) -> None:
    """Lazy, with ``--tcp-established``: post-copy fails (the page server's connection cut
    once the destination runs). The source is put back: resumed with all its memory, its
    TCP input taken again (the lock dropped since CRIU's dump is undone) and its address
    announced again (the destination's rebuild had announced it there), so the idle client's
    connection carries records both ways at once."""
    import subprocess

    from ._migrate_lab import AGENT_PORT
    from ._net_seq import SeqClient
    from .harness import wait_until

    port = 7000
    script = f"/usr/bin/memfill 512 7 & exec /usr/bin/net-seq {port}"
    cid, box = start_in(world, world.a, "mig-back", "sh", "-c", script, wired=True)
    wait_until(lambda: "filled 512 MiB" in box.log_path(cid).read_text(), 120, interval=0.2,
               message="memfill to fill 512 MiB")
    client = SeqClient.connect(world.client_ns, f"{world.subnet}.2", port)
    try:
        client.exchange(20)
        endpoint = (client.local, client.peer)
        mig = world.migrate_popen(cid, world.a, world.b, "--tcp-established", method="lazy")
        wait_until(lambda: world.b.status(cid) is TaskStatus.RUNNING, 120, interval=0.01,
                   message="the destination to run")
        subprocess.run(["nsenter", f"--net={world.b.netns}", "ss", "-K", "dst", world.a.ip,
                        "and", "sport", "!=", f":{AGENT_PORT}"],
                       capture_output=True, text=True, timeout=30, check=False)
        out, err = mig.communicate(timeout=300)
        if mig.returncode == 0:
            pytest.skip(f"post-copy finished before the cut: {out[-300:]}")
        assert mig.returncode == 3, (out, err)
        assert "resumed the source" in out, out
        assert world.a.status(cid) is TaskStatus.RUNNING
        client.exchange(20)  # times out if the source still drops TCP or its path is elsewhere
        assert (client.local, client.peer) == endpoint
    finally:
        client.close()
