"""``pyrunc migrate`` and ``pyrunc agent`` argument parsing (shim.ctl hook)."""

from __future__ import annotations

import dataclasses

import pytest

from shim.ctl._args import parse_args
from shim.ctl._migrate import DEFAULT_AGENT_SOCKET, AgentCommand, MigrateCommand


def test_migrate_defaults() -> None:
    cmd = parse_args(["-a", "/c.sock", "-n", "ns", "migrate", "c1", "--to", "10.0.0.2:7443"],
                     environ={})
    assert cmd == MigrateCommand(address="/c.sock", namespace="ns", container_id="c1",
                                 to="10.0.0.2:7443")


def test_migrate_every_option() -> None:
    cmd = parse_args(["migrate", "c1", "--to", "unix:///a.sock", "--method", "stop-and-copy",
                      "--tcp-established", "--keep-source", "--json", "--tls-cert", "c",
                      "--tls-key", "k", "--tls-ca", "ca", "--work-dir", "/w",
                      "--page-server-address", "10.0.0.1", "--plain-page-server"], environ={})
    assert isinstance(cmd, MigrateCommand)
    assert (cmd.method, cmd.tcp_established, cmd.keep_source, cmd.json) == (
        "stop-and-copy", True, True, True)
    assert cmd.plain_page_server
    assert (cmd.tls_cert, cmd.tls_key, cmd.tls_ca, cmd.work_dir, cmd.page_server_address) == (
        "c", "k", "ca", "/w", "10.0.0.1")


def test_migrate_needs_to_and_a_known_method() -> None:
    with pytest.raises(SystemExit):
        parse_args(["migrate", "c1"], environ={})
    with pytest.raises(SystemExit):
        parse_args(["migrate", "c1", "--to", "x:1", "--method", "teleport"], environ={})


def test_agent_defaults_and_options() -> None:
    cmd = parse_args(["agent"], environ={})
    assert isinstance(cmd, AgentCommand) and cmd.listen == (DEFAULT_AGENT_SOCKET,)
    cmd = parse_args(["agent", "--listen", "unix:///a.sock", "--listen", "0.0.0.0:7443",
                      "--insecure-tcp", "--runtime-root", "/r", "--cgroup-parent", "/p"],
                     environ={})
    assert isinstance(cmd, AgentCommand)
    assert cmd.listen == ("unix:///a.sock", "0.0.0.0:7443")
    assert (cmd.insecure_tcp, cmd.runtime_root, cmd.cgroup_parent) == (True, "/r", "/p")


def test_tls_files_go_together() -> None:
    from shim.ctl._migrate import run_migrate

    cmd = parse_args(["migrate", "c1", "--to", "10.0.0.2:7443", "--tls-cert", "c"], environ={})
    assert isinstance(cmd, MigrateCommand)
    assert run_migrate(cmd) == 1  # refused before anything: one line on stderr


def test_plaintext_tcp_refused_without_insecure_tcp() -> None:
    from shim.migrate import MigrateError
    from shim.migrate._tls import channel

    with pytest.raises(MigrateError, match="--insecure-tcp"):
        channel("10.0.0.2:7443", None)
    channel("10.0.0.2:7443", None, insecure_tcp=True).close()
    channel("unix:///nowhere.sock", None).close()


def test_the_page_server_uses_tls_exactly_when_the_agent_is_reached_with_mutual_tls() -> None:
    from shim.migrate import MigrateOptions, TlsFiles
    from shim.migrate._source import _page_server_tls

    tls = TlsFiles("c", "k", "ca")
    opts = MigrateOptions(containerd="/c.sock", namespace="n", container_id="c1",
                          to="10.0.0.2:7443", tls=tls)
    assert _page_server_tls(opts)
    assert not _page_server_tls(dataclasses.replace(opts, plain_page_server=True))
    assert not _page_server_tls(dataclasses.replace(opts, tls=None, insecure_tcp=True))
    assert not _page_server_tls(dataclasses.replace(opts, to="unix:///a.sock"))
