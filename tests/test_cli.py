"""Command-line parsing as Go's flag package does it, and the socket address derivation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shim import cli
from shim.cli import socket_address
from shim.flags import Flags, UsageError, parse_flags


def test_containerd_start_invocation() -> None:
    flags = parse_flags(
        ["-namespace", "default", "-address", "/run/containerd/containerd.sock",
         "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start"]
    )
    assert flags == Flags(
        namespace="default", id="c1", address="/run/containerd/containerd.sock",
        publish_binary="/usr/bin/containerd", debug=True, action="start",
    )


@pytest.mark.parametrize(
    "args",
    [["--namespace=ns", "delete"], ["-namespace=ns", "delete"], ["--namespace", "ns", "delete"]],
)
def test_flag_spellings(args: list[str]) -> None:
    flags = parse_flags(args)
    assert (flags.namespace, flags.action) == ("ns", "delete")


def test_flags_end_at_first_positional() -> None:
    flags = parse_flags(["-id", "x", "start", "-debug"])
    assert flags.action == "start" and not flags.debug


def test_bool_values() -> None:
    assert parse_flags(["-debug=true"]).debug
    assert not parse_flags(["-debug=false"]).debug
    assert parse_flags(["-v"]).version
    with pytest.raises(UsageError, match="invalid boolean"):
        parse_flags(["-debug=yes"])


def test_errors() -> None:
    with pytest.raises(UsageError, match="not defined: -bogus"):
        parse_flags(["-bogus"])
    with pytest.raises(UsageError, match="needs an argument: -id"):
        parse_flags(["-id"])


def test_socket_address_matches_runc_shim() -> None:
    want = hashlib.sha256(b"/run/containerd/containerd.sock/default/myid").hexdigest()
    got = socket_address("/run/containerd/containerd.sock", "default", "myid")
    assert got == f"unix:///run/containerd/s/{want}"
    assert len(got.removeprefix("unix://")) < 107


def test_delete_response_matches_generated_message() -> None:
    from shim.api.containerd.task.v2 import shim_pb2
    from shim.cleanup import encode_delete_response

    for pid, status, at in [(1234, 137, 1764111111.25), (0, 0, 1.0), (2**31 - 1, 255, 2e9 + 0.5)]:
        msg = shim_pb2.DeleteResponse()
        msg.ParseFromString(encode_delete_response(pid, status, at))
        assert (msg.pid, msg.exit_status, msg.exited_at.seconds) == (pid, status, int(at))
        assert msg.exited_at.nanos == int((at - int(at)) * 1e9)
        want = shim_pb2.DeleteResponse(pid=pid, exit_status=status)
        want.exited_at.seconds, want.exited_at.nanos = int(at), int((at - int(at)) * 1e9)
        assert encode_delete_response(pid, status, at) == want.SerializeToString()


def test_runtime_options_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    from shim.cleanup import read_runtime_options, write_runtime_options

    assert isinstance(tmp_path, Path)
    opts = {"binary": "crun", "root": "/run/x", "systemd_cgroup": "false"}
    write_runtime_options(str(tmp_path), opts)
    assert read_runtime_options(str(tmp_path)) == opts
    assert read_runtime_options(str(tmp_path / "missing")) == {}


def _fake_forkserver(monkeypatch: pytest.MonkeyPatch, path: Path,
                     replace_after: float | None) -> list[float]:
    """forkserver's socket_path/spawn_server/request_daemon for start's wait for a new fork
    server: the "server" renames a new socket file over ``path`` after ``replace_after``
    seconds (None: never); returns when requests came, relative to the spawn."""
    import threading
    import time

    from shim import forkserver

    requested: list[float] = []
    spawned: list[float] = []

    def spawn() -> None:
        spawned.append(time.monotonic())
        if replace_after is not None:
            def bind() -> None:
                time.sleep(replace_after)
                (path.parent / "new").write_text("")
                os.rename(path.parent / "new", path)
            threading.Thread(target=bind, daemon=True).start()

    def request(listener: object, argv: list[str]) -> int:
        requested.append(time.monotonic() - spawned[0])
        return 4242

    monkeypatch.setattr(forkserver, "socket_path", lambda place=None: str(path))
    monkeypatch.setattr(forkserver, "spawn_server", spawn)
    monkeypatch.setattr(forkserver, "request_daemon", request)
    return requested


def test_start_waits_for_the_new_fork_server_not_for_a_dead_ones_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "forkserver.sock"
    path.write_text("")  # left by a server that died
    requested = _fake_forkserver(monkeypatch, path, replace_after=0.2)
    assert cli._daemon_from_new_server(None, ["argv"]) == 4242  # type: ignore[arg-type]
    assert len(requested) == 1 and requested[0] >= 0.2


def test_start_gives_up_on_a_fork_server_that_never_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested = _fake_forkserver(monkeypatch, tmp_path / "forkserver.sock", replace_after=None)
    monkeypatch.setattr(cli, "_SERVER_WAIT", 0.1)
    assert cli._daemon_from_new_server(None, ["argv"]) == 0  # type: ignore[arg-type]
    assert requested == []


def test_exit_now_flushes_what_was_written_and_exits_with_the_code() -> None:
    code = ("import sys\nfrom shim.cli import _exit_now\n"
            "sys.stdout.write('unix:///x')\n"
            "print('err', end='', file=sys.stderr)\n_exit_now(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                          check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"unix:///x", b"err")


def test_group_is_the_annotated_pod_or_the_container(tmp_path: Path) -> None:
    """``start`` groups a pod's containers into one shim, as the runc shim does."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"process": {"env": ["X=io.kubernetes.cri.sandbox-id"]}, "annotations": {
            "io.kubernetes.cri.sandbox-id": "pod1", "io.kubernetes.cri.container-type": "c"}}))
    assert cli._group(str(tmp_path), "c1") == "pod1"
    (tmp_path / "config.json").write_text(json.dumps(
        {"process": {"env": ["X=io.kubernetes.cri.sandbox-id"]}, "annotations": {}}))
    assert cli._group(str(tmp_path), "c1") == "c1"
    (tmp_path / "config.json").write_text('{"annotations": {"io.containerd.runc.v2.group": ')
    assert cli._group(str(tmp_path), "c1") == "c1"  # not JSON: the container alone
    assert cli._group(str(tmp_path / "missing"), "c2") == "c2"
