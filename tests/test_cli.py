"""Command-line parsing as Go's flag package does it, and the socket address derivation."""

from __future__ import annotations

import hashlib

import pytest

from shim.cli import Flags, UsageError, parse_flags, socket_address


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
