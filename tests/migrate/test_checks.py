"""shim.migrate._checks: CRIU version parsing and the refusal rules (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from shim.migrate._checks import (
    LAZY_PIPE_MAX_SIZE,
    HostFacts,
    Method,
    criu_config_refusal,
    criu_log_refusal,
    criu_version,
    refusals,
)

HOST = HostFacts(kernel="6.18.0", machine="x86_64", criu_version=40201, lazy_pages=True,
                 mem_dirty_track=False, pipe_max_size=LAZY_PIPE_MAX_SIZE, free_bytes=10 << 30,
                 nftables_lock=True, criu_tls=True)


@pytest.mark.parametrize(("text", "number"), [
    ("Version: 4.2.1\n", 40201),
    ("Version: 4.2\nGitID: v4.2-1-g0\n", 40200),
    ("Version: 3.19\n", 31900),
    ("nonsense", 0),
])
def test_criu_version(text: str, number: int) -> None:
    assert criu_version(text) == number


def test_this_machine_allows_lazy_and_stop_and_copy() -> None:
    assert refusals(HOST, HOST, Method.LAZY, 1 << 30) == []
    assert refusals(HOST, HOST, Method.STOP_AND_COPY, 1 << 30) == []


def test_pre_copy_refused_without_soft_dirty_naming_the_measure() -> None:
    (reason,) = refusals(HOST, HOST, Method.PRE_COPY, 0)
    assert "soft-dirty" in reason and "mem_dirty_track" in reason and "6.18.0" in reason


def change(**kw: object) -> HostFacts:
    return dataclasses.replace(HOST, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("source", "dest", "method", "needle"), [
    (HOST, change(lazy_pages=False), Method.LAZY, "destination cannot do lazy pages"),
    (change(lazy_pages=False), HOST, Method.LAZY, "source cannot do lazy pages"),
    (change(pipe_max_size=1 << 20), HOST, Method.LAZY, "fs.pipe-max-size"),
    (HOST, change(criu_version=40100), Method.STOP_AND_COPY, "older than the source's"),
    (HOST, change(criu_version=0), Method.STOP_AND_COPY, "destination has no CRIU"),
    (HOST, change(machine="aarch64"), Method.STOP_AND_COPY, "architectures differ"),
    (HOST, change(free_bytes=100), Method.STOP_AND_COPY, "bytes free"),
    (HOST, change(nftables_lock=False), Method.STOP_AND_COPY,
     "destination CRIU cannot lock the network with nftables"),
    (change(nftables_lock=False), HOST, Method.LAZY,
     "source CRIU cannot lock the network with nftables"),
])
def test_refusals(source: HostFacts, dest: HostFacts, method: Method, needle: str) -> None:
    reasons = refusals(source, dest, method, 1000)
    assert any(needle in r for r in reasons), reasons


def test_lazy_settings_do_not_matter_to_stop_and_copy() -> None:
    dest = change(lazy_pages=False, pipe_max_size=0)
    assert refusals(dest, dest, Method.STOP_AND_COPY, 0) == []


def test_a_newer_destination_criu_is_fine() -> None:
    assert refusals(HOST, change(criu_version=40300), Method.LAZY, 0) == []


def test_nftables_lock_refusal_names_the_check_once_per_side() -> None:
    off = change(nftables_lock=False)
    reasons = [r for r in refusals(off, off, Method.LAZY, 0) if "nftables" in r]
    assert [r.split()[0] for r in reasons] == ["source", "destination"]
    assert all("network_lock_nftables" in r for r in reasons)


def test_no_criu_is_not_also_reported_as_no_nftables_lock() -> None:
    none = change(criu_version=0, nftables_lock=False)
    reasons = refusals(HOST, none, Method.STOP_AND_COPY, 0)
    assert reasons == ["destination has no CRIU"]


@pytest.mark.parametrize("config", [
    "log-file /var/log/criu.log\n",
    "verbosity 2\n",
    "verbosity=0\n",
    "tcp-close\nverbosity\n",
])
def test_a_criu_config_that_moves_or_quiets_the_dump_log_is_refused(config: str) -> None:
    why = criu_log_refusal(config, "its verdict on the lazy transfer")
    assert config.splitlines()[-1] in why and "its verdict on the lazy transfer" in why


@pytest.mark.parametrize("config", ["", "# verbosity 0\n", "verbosity 4\n",
                                    "tcp-established\nverbosity=3\n"])
def test_a_criu_config_that_keeps_the_dump_log_is_fine(config: str) -> None:
    assert criu_log_refusal(config, "x") == ""


def test_a_destination_that_reports_no_nftables_lock_is_told_to_update_its_agent() -> None:
    reasons = refusals(HOST, change(nftables_lock=None), Method.STOP_AND_COPY, 0)
    assert len(reasons) == 1 and "reports no CRIU nftables network lock" in reasons[0], reasons
    assert "update it" in reasons[0] and "cannot lock" not in reasons[0]


def test_an_agent_without_the_nftables_field_is_told_from_one_that_says_false() -> None:
    from shim.api.pyrunc.migrate.v1 import agent_pb2
    from shim.migrate._source import _facts_of

    old = agent_pb2.ProbeReply(facts=agent_pb2.HostFacts(criu_version=40201))
    said_no = agent_pb2.ProbeReply(facts=agent_pb2.HostFacts(nftables_lock=False))
    said_yes = agent_pb2.ProbeReply(facts=agent_pb2.HostFacts(nftables_lock=True))
    # over the wire, as an old agent's bytes reach a new source
    wire = agent_pb2.ProbeReply.FromString
    assert _facts_of(wire(old.SerializeToString())).nftables_lock is None
    assert _facts_of(wire(said_no.SerializeToString())).nftables_lock is False
    assert _facts_of(wire(said_yes.SerializeToString())).nftables_lock is True


def test_a_container_naming_its_own_criu_configuration_is_refused_naming_it() -> None:
    why = criu_config_refusal({"org.criu.config": "/etc/mine.conf", "other": "x"})
    assert "org.criu.config='/etc/mine.conf'" in why, why
    assert criu_config_refusal({"other": "x"}) == ""


@pytest.mark.parametrize(("source", "dest", "needle"), [
    (HOST, change(criu_tls=False), "destination CRIU has no TLS (criu check --tls fails"),
    (change(criu_tls=False), HOST, "source CRIU has no TLS"),
    (HOST, change(criu_tls=None), "the destination reports no CRIU TLS support"),
])
def test_a_move_with_tls_needs_criu_with_tls_on_both_sides(
        source: HostFacts, dest: HostFacts, needle: str) -> None:
    for method in (Method.LAZY, Method.STOP_AND_COPY):
        reasons = refusals(source, dest, method, 0, page_server_tls=True)
        assert len(reasons) == 1 and needle in reasons[0], reasons
        assert refusals(source, dest, method, 0) == []  # no TLS asked (unix socket, plaintext)

