"""shim.checkpoint.plan: every option from every source -> the exact runc argv and CRIU config.

Golden tables first (one row per option and source), then restore, refusals, the merge rules
between request and annotations, the stored plan, and checks against the installed runc's
``--help`` (skipped when runc is absent).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import pytest
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

import shim.checkpoint
from shim import typeurl
from shim.api.containerd.linux.runctypes import runc_pb2
from shim.api.containerd.runc.options import oci_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint import plan as planmod
from shim.checkpoint.plan import (
    ANNOTATION_PREFIX,
    ANNOTATIONS,
    CRIU_VERSION_FLOOR,
    CRIU_VERSION_NETWORK_LOCK,
    STORED_PLAN,
    CgroupMode,
    CheckpointPlan,
    Namespace,
    NetworkLock,
    PageServer,
    RestoreSource,
    checkpoint_args,
    criu_config,
    dump_network_lock,
    dump_plan,
    load_plan,
    plan_checkpoint,
    plan_restore,
    restore_args,
    restore_source,
    tls_args,
)
from shim.errors import InvalidArgument
from shim.runtime import RestoreOpts

IMG = "/run/ckpt/img"  # CheckpointTaskRequest.path
WORK = "/run/bundle/work/criu-work"  # default_work_dir
BASE = ["--image-path", IMG, "--work-path", WORK]
A = ANNOTATION_PREFIX
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "checkpoint-options.md"

RuncV1 = oci_pb2.CheckpointOptions  # containerd.runc.v1 (what ctr sends)
LinuxRunc = runc_pb2.CheckpointOptions  # containerd.linux.runc (older)
Pyrunc = checkpoint_pb2.CheckpointOptions  # pyrunc.v1 (superset)
ALL_TYPES = [RuncV1, LinuxRunc, Pyrunc]


def plan_of(
    msg: Message | AnyMessage | None = None, annotations: Mapping[str, str] | None = None
) -> CheckpointPlan:
    any_ = msg if isinstance(msg, AnyMessage) or msg is None else typeurl.pack(msg)
    return plan_checkpoint(IMG, any_, annotations or {}, default_work_dir=WORK)


def render(plan: CheckpointPlan) -> tuple[list[str], str, str]:
    return checkpoint_args(plan), criu_config(plan, restore=False), criu_config(plan, restore=True)


# --------------------------------------------------------------------------------------------
# Golden table: options -> argv + CRIU config (dump, restore).

LR = "--leave-running"

# (message kwargs, extra argv after BASE, dump config, restore config); checked for every
# message type that has the fields.
COMMON_ROWS: list[tuple[dict[str, Any], list[str], str, str]] = [
    ({}, [LR], "", ""),
    ({"exit": True}, [], "", ""),
    ({"open_tcp": True}, [LR, "--tcp-established"], "", ""),
    ({"external_unix_sockets": True}, [LR, "--ext-unix-sk"], "", ""),
    ({"terminal": True}, [LR, "--shell-job"], "", ""),
    ({"file_locks": True}, [LR, "--file-locks"], "", ""),
    ({"empty_namespaces": ["network"]}, [LR, "--empty-ns", "network"], "", ""),
    ({"empty_namespaces": ["network", "network"]}, [LR, "--empty-ns", "network"], "", ""),
    ({"cgroups_mode": ""}, [LR], "", ""),
    # runc 1.1 drops restore --manage-cgroups-mode: the restore config carries the mode.
    ({"cgroups_mode": "soft"}, [LR, "--manage-cgroups-mode", "soft"], "", "manage-cgroups=soft\n"),
    ({"cgroups_mode": "full"}, [LR, "--manage-cgroups-mode", "full"], "", "manage-cgroups=full\n"),
    (
        {"cgroups_mode": "strict"},
        [LR, "--manage-cgroups-mode", "strict"],
        "",
        "manage-cgroups=strict\n",
    ),
    # runc 1.1 refuses "ignore": it goes through the CRIU config, for dump and restore.
    ({"cgroups_mode": "ignore"}, [LR], "manage-cgroups=ignore\n", "manage-cgroups=ignore\n"),
]


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.DESCRIPTOR.full_name)
@pytest.mark.parametrize(
    ("kwargs", "argv", "dump_cfg", "restore_cfg"),
    COMMON_ROWS,
    ids=[repr(r[0]) for r in COMMON_ROWS],
)
def test_common_fields_of_every_options_type(
    cls: type[Message],
    kwargs: dict[str, Any],
    argv: list[str],
    dump_cfg: str,
    restore_cfg: str,
) -> None:
    assert render(plan_of(cls(**kwargs))) == (BASE + argv, dump_cfg, restore_cfg)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.DESCRIPTOR.full_name)
def test_image_and_work_path_of_every_options_type(cls: type[Message]) -> None:
    plan = plan_of(cls(image_path="/srv/images", work_path="/srv/work"))
    assert checkpoint_args(plan) == [
        "--image-path", "/srv/images", "--work-path", "/srv/work", LR,
    ]  # fmt: skip


def test_linux_runc_type_numbers_work_path_8_and_image_path_9() -> None:
    # Same bytes, read as the two types: the field numbers of the two paths are swapped.
    raw = RuncV1(image_path="/srv/eight", work_path="/srv/nine").SerializeToString()
    as_linux = AnyMessage(type_url="containerd.linux.runc.CheckpointOptions", value=raw)
    plan = plan_of(as_linux)
    assert (plan.images_dir, plan.work_dir) == ("/srv/nine", "/srv/eight")


PYRUNC_ROWS: list[tuple[dict[str, Any], list[str], str, str]] = [
    ({"parent_path": "/run/ckpt/pre1"}, ["--parent-path", "../pre1", LR], "", ""),
    ({"parent_path": "/var/lib/pre/0"}, ["--parent-path", "../../../var/lib/pre/0", LR], "", ""),
    ({"pre_dump": True}, [LR, "--pre-dump"], "", ""),
    ({"auto_dedup": True}, [LR, "--auto-dedup"], "", ""),
    (
        {"lazy_pages": True, "page_server": "10.0.0.2:27182"},
        [LR, "--lazy-pages", "--page-server", "10.0.0.2:27182", "--status-fd", "3"],
        "",
        "",
    ),
    (
        {"exit": True, "lazy_pages": True, "page_server": "[fd00::2]:27182"},
        ["--lazy-pages", "--page-server", "[fd00::2]:27182", "--status-fd", "3"],
        "",
        "",
    ),
    ({"page_server": "pages.example:1"}, [LR, "--page-server", "pages.example:1"], "", ""),
    ({"page_server": "h:65535"}, [LR, "--page-server", "h:65535"], "", ""),
    ({"status_fd": -1}, [LR], "", ""),
    ({"status_fd": 0}, [LR], "", ""),
    ({"tcp_close": True}, [LR], "tcp-close\n", "tcp-close\n"),
    ({"tcp_skip_in_flight": True}, [LR], "skip-in-flight\n", ""),
    ({"link_remap": True}, [LR], "link-remap\n", ""),
    ({"ghost_limit": 1}, [LR], "ghost-limit 1\n", ""),
    ({"ghost_limit": 2**32 - 1}, [LR], "ghost-limit 4294967295\n", ""),
    ({"network_lock": "iptables"}, [LR], "", ""),  # CRIU's default: nothing to render
    # dump only: a restore takes the method from the images' inventory, never from options
    ({"network_lock": "nftables"}, [LR], "network-lock nftables\n", ""),
    ({"network_lock": "skip"}, [LR], "network-lock skip\n", ""),
    ({"network_lock": ""}, [LR], "", ""),
    ({"track_mem": True}, [LR], "track-mem\n", ""),
    # runc sets track_mem itself for --pre-dump and --parent-path: not repeated in the config.
    ({"track_mem": True, "pre_dump": True}, [LR, "--pre-dump"], "", ""),
]


@pytest.mark.parametrize(
    ("kwargs", "argv", "dump_cfg", "restore_cfg"),
    PYRUNC_ROWS,
    ids=[repr(r[0]) for r in PYRUNC_ROWS],
)
def test_pyrunc_fields(
    kwargs: dict[str, Any], argv: list[str], dump_cfg: str, restore_cfg: str
) -> None:
    assert render(plan_of(Pyrunc(**kwargs))) == (BASE + argv, dump_cfg, restore_cfg)


ANNOTATION_ROWS: list[tuple[str, str, list[str], str, str]] = [
    ("leave-running", "true", [LR], "", ""),
    ("leave-running", "false", [], "", ""),
    ("tcp-established", "true", [LR, "--tcp-established"], "", ""),
    ("tcp-established", "false", [LR], "", ""),
    ("ext-unix-sk", "true", [LR, "--ext-unix-sk"], "", ""),
    ("shell-job", "true", [LR, "--shell-job"], "", ""),
    ("file-locks", "true", [LR, "--file-locks"], "", ""),
    ("empty-ns", "network", [LR, "--empty-ns", "network"], "", ""),
    ("empty-ns", " network , network ", [LR, "--empty-ns", "network"], "", ""),
    ("empty-ns", "", [LR], "", ""),
    (
        "manage-cgroups-mode",
        "full",
        [LR, "--manage-cgroups-mode", "full"],
        "",
        "manage-cgroups=full\n",
    ),
    ("manage-cgroups-mode", "ignore", [LR], "manage-cgroups=ignore\n", "manage-cgroups=ignore\n"),
    ("auto-dedup", "true", [LR, "--auto-dedup"], "", ""),
    ("pre-dump", "true", [LR, "--pre-dump"], "", ""),
    ("page-server", "127.0.0.1:9999", [LR, "--page-server", "127.0.0.1:9999"], "", ""),
    ("tcp-close", "true", [LR], "tcp-close\n", "tcp-close\n"),
    ("skip-in-flight", "true", [LR], "skip-in-flight\n", ""),
    ("link-remap", "true", [LR], "link-remap\n", ""),
    ("ghost-limit", "1048576", [LR], "ghost-limit 1048576\n", ""),
    ("ghost-limit", "0", [LR], "", ""),
    ("network-lock", "iptables", [LR], "", ""),
    ("network-lock", "nftables", [LR], "network-lock nftables\n", ""),
    ("network-lock", "skip", [LR], "network-lock skip\n", ""),
    ("network-lock", "", [LR], "", ""),
    ("track-mem", "true", [LR], "track-mem\n", ""),
]


@pytest.mark.parametrize(
    ("name", "value", "argv", "dump_cfg", "restore_cfg"),
    ANNOTATION_ROWS,
    ids=[f"{r[0]}={r[1]!r}" for r in ANNOTATION_ROWS],
)
def test_annotations(
    name: str, value: str, argv: list[str], dump_cfg: str, restore_cfg: str
) -> None:
    assert render(plan_of(None, {A + name: value})) == (BASE + argv, dump_cfg, restore_cfg)


def test_path_annotations() -> None:
    plan = plan_of(
        None,
        {
            A + "image-path": "/srv/images",
            A + "work-path": "/srv/work",
            A + "parent-path": "/srv/pre",
        },
    )
    assert checkpoint_args(plan) == [
        "--image-path", "/srv/images", "--work-path", "/srv/work",
        "--parent-path", "../pre", LR,
    ]  # fmt: skip
    assert plan.track_mem


def test_lazy_pages_annotations() -> None:
    plan = plan_of(None, {A + "lazy-pages": "true", A + "page-server": "10.1.1.1:27182"})
    assert checkpoint_args(plan)[len(BASE) :] == [
        LR, "--lazy-pages", "--page-server", "10.1.1.1:27182", "--status-fd", "3",
    ]  # fmt: skip


def test_every_annotation_has_a_row() -> None:
    tested = {A + r[0] for r in ANNOTATION_ROWS} | {
        A + "image-path", A + "work-path", A + "parent-path", A + "lazy-pages",
    }  # fmt: skip
    assert tested == ANNOTATIONS


TLS_CONFIG = "tls\ntls-cacert /pki/ca.pem\ntls-cert /pki/c.pem\ntls-key /pki/k.pem\n"


@pytest.mark.parametrize("name", ["tls-cacert", "tls-cert", "tls-key", "tls-no-cn-verify"])
def test_tls_is_never_taken_from_annotations(name: str) -> None:
    """A pod's annotations must not choose the certificate files root's CRIU reads, nor turn
    off the check of the peer's name: the page server's TLS comes from the request only."""
    value = "true" if name == "tls-no-cn-verify" else "/pod/chosen.pem"
    with pytest.raises(InvalidArgument, match=f"annotation {A}{name}: unknown checkpoint"):
        plan_of(None, {A + name: value, A + "page-server": "10.0.0.2:27"})


def test_tls_from_the_request_renders_config_lines_and_the_lazy_daemon_args() -> None:
    plan = plan_of(Pyrunc(lazy_pages=True, page_server="10.0.0.1:27", tls_cacert="/pki/ca.pem",
                          tls_cert="/pki/c.pem", tls_key="/pki/k.pem", tls_no_cn_verify=True))
    assert (plan.tls_cacert, plan.tls_cert, plan.tls_key) == (
        "/pki/ca.pem", "/pki/c.pem", "/pki/k.pem")
    assert criu_config(plan, restore=False).endswith(TLS_CONFIG + "tls-no-cn-verify\n")
    assert "tls" not in criu_config(plan, restore=True)
    assert tls_args(plan) == ["--tls", "--tls-cacert", "/pki/ca.pem", "--tls-cert",
                              "/pki/c.pem", "--tls-key", "/pki/k.pem", "--tls-no-cn-verify"]
    assert tls_args(plan_of(Pyrunc(page_server="10.0.0.1:27"))) == []


@pytest.mark.parametrize(("fields", "needle"), [
    ({"tls_cacert": "/ca.pem", "tls_cert": "/c.pem"}, "missing: tls_key"),
    ({"tls_cacert": "/ca.pem", "tls_cert": "/c.pem", "tls_key": "/k.pem", "page_server": ""},
     "need page_server"),
    ({"tls_no_cn_verify": True}, "tls_no_cn_verify needs"),
    ({"tls_cacert": "ca.pem", "tls_cert": "/c.pem", "tls_key": "/k.pem"}, "not absolute"),
    ({"tls_cacert": "/my ca.pem", "tls_cert": "/c.pem", "tls_key": "/k.pem"},
     "configuration file cannot carry"),
    ({"tls_cacert": "/ca.pem", "tls_cert": "/c#.pem", "tls_key": "/k.pem"},
     "configuration file cannot carry"),
])
def test_bad_tls_is_refused(fields: dict[str, object], needle: str) -> None:
    request: dict[str, object] = {"page_server": "10.0.0.1:27", **fields}
    with pytest.raises(InvalidArgument, match=needle):
        plan_of(Pyrunc(**request))  # type: ignore[arg-type]


def test_tls_is_not_stored_and_a_restore_takes_its_own() -> None:
    dumped = plan_of(Pyrunc(lazy_pages=True, page_server="10.0.0.1:27", tls_cacert="/a/ca.pem",
                            tls_cert="/a/c.pem", tls_key="/a/k.pem", tls_no_cn_verify=True))
    stored = dump_plan(dumped)
    assert b"tls" not in stored
    assert load_plan(stored).tls_cacert == ""
    source = restore_source("", typeurl.pack(checkpoint_pb2.RestoreOptions(
        image_path="/img", lazy_pages=True, page_server="10.0.0.1:27", tls_cacert="/b/ca.pem",
        tls_cert="/b/c.pem", tls_key="/b/k.pem", tls_no_cn_verify=True)))
    assert source is not None
    restored = plan_restore(source, stored, {}, default_work_dir="/w")
    assert tls_args(restored)[:3] == ["--tls", "--tls-cacert", "/b/ca.pem"]
    assert restored.tls_no_cn_verify
    plain = restore_source("", typeurl.pack(checkpoint_pb2.RestoreOptions(image_path="/img")))
    assert plain is not None
    assert tls_args(plan_restore(plain, stored, {}, default_work_dir="/w")) == []


def test_everything_at_once_keeps_the_fixed_order() -> None:
    msg = Pyrunc(
        exit=False,
        open_tcp=True,
        external_unix_sockets=True,
        terminal=True,
        file_locks=True,
        empty_namespaces=["network"],
        cgroups_mode="strict",
        image_path="/srv/ck/2",
        work_path="/srv/work",
        parent_path="/srv/ck/1",
        auto_dedup=True,
        page_server="dst:27182",
        tcp_close=True,
        tcp_skip_in_flight=True,
        link_remap=True,
        ghost_limit=4096,
        network_lock="iptables",
        track_mem=True,
    )
    plan = plan_of(msg)
    assert checkpoint_args(plan) == [
        "--image-path", "/srv/ck/2", "--work-path", "/srv/work",
        "--parent-path", "../1", "--leave-running", "--tcp-established", "--ext-unix-sk",
        "--shell-job", "--file-locks", "--empty-ns", "network", "--manage-cgroups-mode", "strict",
        "--auto-dedup", "--page-server", "dst:27182",
    ]  # fmt: skip
    assert criu_config(plan, restore=False) == (
        "tcp-close\nskip-in-flight\nlink-remap\nghost-limit 4096\n"
    )
    assert criu_config(plan, restore=True) == "tcp-close\nmanage-cgroups=strict\n"


def test_every_config_line_at_once_keeps_the_fixed_order() -> None:
    plan = plan_of(
        Pyrunc(
            tcp_close=True,
            tcp_skip_in_flight=True,
            link_remap=True,
            ghost_limit=4096,
            track_mem=True,
            network_lock="skip",
            cgroups_mode="ignore",
        )
    )
    assert criu_config(plan, restore=False) == (
        "tcp-close\nskip-in-flight\nlink-remap\nghost-limit 4096\ntrack-mem\n"
        "network-lock skip\nmanage-cgroups=ignore\n"
    )
    assert criu_config(plan, restore=True) == "tcp-close\nmanage-cgroups=ignore\n"


@pytest.mark.parametrize(
    ("fields", "sockets", "version", "lock"),
    [
        ({}, False, CRIU_VERSION_NETWORK_LOCK, NetworkLock.SKIP),
        ({}, False, CRIU_VERSION_NETWORK_LOCK + 100, NetworkLock.SKIP),
        ({}, True, CRIU_VERSION_NETWORK_LOCK, None),
        ({}, False, CRIU_VERSION_NETWORK_LOCK - 1, None),
        ({"network_lock": NetworkLock.IPTABLES}, False, CRIU_VERSION_NETWORK_LOCK,
         NetworkLock.IPTABLES),
        ({"network_lock": NetworkLock.NFTABLES}, False, CRIU_VERSION_NETWORK_LOCK,
         NetworkLock.NFTABLES),
        ({"tcp_established": True}, False, CRIU_VERSION_NETWORK_LOCK, None),
        ({"leave_running": False}, False, CRIU_VERSION_NETWORK_LOCK, None),
        ({"pre_dump": True}, False, CRIU_VERSION_NETWORK_LOCK, None),
    ],
)  # fmt: skip
def test_dump_network_lock_skips_the_lock_only_where_it_protects_nothing(
    fields: dict[str, Any], sockets: bool, version: int, lock: NetworkLock | None
) -> None:
    plan = CheckpointPlan("/img", "/work", **fields)
    out = dump_network_lock(plan, criu_version=version, inet_sockets=sockets)
    assert out.network_lock is lock
    assert out == dataclasses.replace(plan, network_lock=lock)
    if lock is NetworkLock.SKIP:  # the config line that carries it, and the CRIU it needs
        assert "network-lock skip\n" in criu_config(out, restore=False)
        assert "network-lock" not in criu_config(out, restore=True)
        assert out.required_criu_version == CRIU_VERSION_NETWORK_LOCK
    else:
        assert out is plan


def test_network_lock_in_the_request_wins_over_the_annotation() -> None:
    plan = plan_of(Pyrunc(network_lock="skip"), {A + "network-lock": "nftables"})
    assert plan.network_lock is NetworkLock.SKIP
    plan = plan_of(Pyrunc(), {A + "network-lock": "nftables"})
    assert plan.network_lock is NetworkLock.NFTABLES


# --------------------------------------------------------------------------------------------
# The CRIU version a plan needs.


@pytest.mark.parametrize(
    ("lock", "version"),
    [
        (None, 30000),
        (NetworkLock.IPTABLES, 30000),  # CRIU's default: nothing reaches CRIU
        (NetworkLock.NFTABLES, 40201),  # a config-file network-lock crashes CRIU <= 4.2.0
        (NetworkLock.SKIP, 40201),
    ],
)
def test_required_criu_version(lock: NetworkLock | None, version: int) -> None:
    assert (CRIU_VERSION_FLOOR, CRIU_VERSION_NETWORK_LOCK) == (30000, 40201)
    plan = CheckpointPlan(IMG, WORK, network_lock=lock)
    assert plan.required_criu_version == version
    # a restore of the plan asks for the same CRIU as its dump
    stored = plan_restore(RestoreSource("/c"), dump_plan(plan), {}, default_work_dir="/w")
    assert stored.required_criu_version == version


def test_required_criu_version_ignores_the_other_options() -> None:
    plan = plan_of(
        Pyrunc(
            tcp_close=True, link_remap=True, ghost_limit=1, track_mem=True, cgroups_mode="ignore"
        )
    )
    assert plan.required_criu_version == CRIU_VERSION_FLOOR


# --------------------------------------------------------------------------------------------
# containerd's defaults.


def test_no_options_leaves_the_container_running() -> None:
    plan = plan_of(None)
    assert plan == CheckpointPlan(images_dir=IMG, work_dir=WORK)
    assert checkpoint_args(plan) == [*BASE, LR]
    assert criu_config(plan, restore=False) == criu_config(plan, restore=True) == ""


def test_empty_any_is_no_options() -> None:
    assert plan_of(AnyMessage()) == plan_of(None)


def test_ctr_container_checkpoint_task() -> None:
    # `ctr c checkpoint --task` sends containerd.runc.v1 {exit=false, file_locks=true}.
    msg = RuncV1(exit=False, file_locks=True)
    assert checkpoint_args(plan_of(msg)) == [*BASE, "--leave-running", "--file-locks"]


def test_ctr_task_checkpoint_exit() -> None:
    assert checkpoint_args(plan_of(RuncV1(exit=True))) == BASE


def test_type_url_with_a_prefix_is_accepted() -> None:
    any_ = AnyMessage()
    any_.Pack(RuncV1(open_tcp=True))  # type.googleapis.com/containerd.runc.v1....
    assert "--tcp-established" in checkpoint_args(plan_of(any_))


def test_pre_dump_and_parent_imply_track_mem() -> None:
    assert plan_of(Pyrunc(pre_dump=True)).track_mem
    assert plan_of(Pyrunc(parent_path="/run/ckpt/pre")).track_mem
    assert not plan_of(None).track_mem
    assert CheckpointPlan(IMG, WORK, pre_dump=True).track_mem


def test_paths_are_normalised() -> None:
    plan = CheckpointPlan("//run/ckpt/./img/", "/w//x/", parent_img="/run/ckpt/pre/")
    assert (plan.images_dir, plan.work_dir, plan.parent_img) == (IMG, "/w/x", "/run/ckpt/pre")
    assert plan_of(RuncV1(image_path="/srv//i/")).images_dir == "/srv/i"


def test_default_work_dir_used_only_without_work_path() -> None:
    assert plan_of(None).work_dir == WORK
    assert plan_of(RuncV1(work_path="/x")).work_dir == "/x"


# --------------------------------------------------------------------------------------------
# Request vs annotations.


def test_request_bool_false_does_not_turn_off_an_annotation() -> None:
    plan = plan_of(RuncV1(open_tcp=False), {A + "tcp-established": "true"})
    assert plan.tcp_established


def test_annotation_false_does_not_turn_off_a_request_bool() -> None:
    plan = plan_of(RuncV1(open_tcp=True), {A + "tcp-established": "false"})
    assert plan.tcp_established


def test_exit_from_either_place_stops_the_container() -> None:
    assert not plan_of(RuncV1(exit=False), {A + "leave-running": "false"}).leave_running
    assert not plan_of(RuncV1(exit=True), {A + "leave-running": "true"}).leave_running
    assert plan_of(RuncV1(exit=False), {A + "leave-running": "true"}).leave_running


def test_request_value_overrides_annotation() -> None:
    ann = {
        A + "manage-cgroups-mode": "full",
        A + "page-server": "a:1",
        A + "image-path": "/ann/img",
        A + "work-path": "/ann/work",
        A + "parent-path": "/ann/parent",
        A + "ghost-limit": "10",
        A + "empty-ns": "network",
    }
    msg = Pyrunc(
        cgroups_mode="strict",
        page_server="b:2",
        image_path="/req/img",
        work_path="/req/work",
        parent_path="/req/parent",
        ghost_limit=20,
    )
    plan = plan_of(msg, ann)
    assert plan.manage_cgroups_mode is CgroupMode.STRICT
    assert plan.page_server == PageServer("b", 2)
    assert (plan.images_dir, plan.work_dir, plan.parent_img) == (
        "/req/img", "/req/work", "/req/parent",
    )  # fmt: skip
    assert plan.ghost_limit == 20
    assert plan.empty_ns == {Namespace.NETWORK}  # request list empty: the annotation's


def test_request_default_values_leave_annotation_values() -> None:
    ann = {A + "manage-cgroups-mode": "full", A + "image-path": "/ann/img", A + "ghost-limit": "7"}
    plan = plan_of(Pyrunc(), ann)
    assert plan.manage_cgroups_mode is CgroupMode.FULL
    assert plan.images_dir == "/ann/img"
    assert plan.ghost_limit == 7


def test_annotations_outside_the_prefix_are_ignored() -> None:
    ann = {"org.criu.config": "/x", "io.pyrunc.other": "1", "io.pyrunc.checkpoint": "x"}
    assert plan_of(None, ann) == plan_of(None)


def test_annotation_and_request_combine_into_a_contradiction() -> None:
    with pytest.raises(InvalidArgument, match="pre_dump cannot be combined with exit"):
        plan_of(RuncV1(exit=True), {A + "pre-dump": "true"})


# --------------------------------------------------------------------------------------------
# Refusals: every one names the option.

REFUSALS: list[tuple[str, Message | None, dict[str, str], type[Exception], str]] = [
    ("pre_dump+exit", Pyrunc(pre_dump=True, exit=True), {}, InvalidArgument,
     "pre_dump cannot be combined with exit"),
    ("lazy without page server", Pyrunc(lazy_pages=True), {}, InvalidArgument,
     "lazy_pages needs page_server"),
    ("lazy+pre_dump", Pyrunc(lazy_pages=True, pre_dump=True, page_server="h:1"), {},
     InvalidArgument, "lazy_pages cannot be combined with pre_dump"),
    ("page server no port", Pyrunc(page_server="host"), {}, InvalidArgument,
     "page_server: 'host' is not host:port"),
    ("page server empty port", Pyrunc(page_server="host:"), {}, InvalidArgument,
     "page_server: port '' of 'host:' is not in 1..65535"),
    ("page server port 0", Pyrunc(page_server="host:0"), {}, InvalidArgument,
     "page_server: port '0' of 'host:0' is not in 1..65535"),
    ("page server port too big", Pyrunc(page_server="host:65536"), {}, InvalidArgument,
     "page_server: port '65536' of 'host:65536' is not in 1..65535"),
    ("page server port name", Pyrunc(page_server="host:http"), {}, InvalidArgument,
     "page_server: port 'http'"),
    ("page server port sign", Pyrunc(page_server="host:+80"), {}, InvalidArgument,
     "page_server: port '+80'"),
    ("page server no host", Pyrunc(page_server=":80"), {}, InvalidArgument,
     "page_server: ':80' is not host:port"),
    ("page server bare ipv6", Pyrunc(page_server="fd00::1:80"), {}, InvalidArgument,
     "write IPv6 as [addr]:port"),
    ("page server bad brackets", Pyrunc(page_server="[fd00::1]80"), {}, InvalidArgument,
     "page_server: '[fd00::1]80' is not host:port or [ipv6]:port"),
    ("page server space", Pyrunc(page_server="a b:80"), {}, InvalidArgument,
     "page_server: 'a b:80' is not host:port"),
    ("empty ns unknown", RuncV1(empty_namespaces=["bogus"]), {}, InvalidArgument,
     "empty_namespaces: unknown namespace 'bogus'; runc accepts only 'network'"),
    ("empty ns criu spelling", RuncV1(empty_namespaces=["net"]), {}, InvalidArgument,
     "empty_namespaces: unknown namespace 'net'; runc accepts only 'network'"),
    ("empty ns pid", RuncV1(empty_namespaces=["network", "pid"]), {}, InvalidArgument,
     "empty_namespaces: runc cannot leave the pid namespace empty; runc accepts only 'network'"),
    ("empty ns mount", LinuxRunc(empty_namespaces=["mount"]), {}, InvalidArgument,
     "runc cannot leave the mount namespace empty"),
    ("cgroups props", RuncV1(cgroups_mode="props"), {}, InvalidArgument,
     "cgroups_mode: 'props' is not one of soft, full, strict, ignore"),
    ("cgroups case", RuncV1(cgroups_mode="Soft"), {}, InvalidArgument,
     "cgroups_mode: 'Soft' is not one of"),
    ("image path relative", RuncV1(image_path="img"), {}, InvalidArgument,
     "image_path: path 'img' is not absolute"),
    ("image path dotdot", RuncV1(image_path="/a/../etc"), {}, InvalidArgument,
     "image_path: path '/a/../etc' contains '..'"),
    ("image path NUL", RuncV1(image_path="/a\0b"), {}, InvalidArgument,
     "image_path: path '/a\\x00b' contains NUL"),
    ("work path relative", LinuxRunc(work_path="./w"), {}, InvalidArgument,
     "work_path: path './w' is not absolute"),
    ("work path dotdot", Pyrunc(work_path="/w/.."), {}, InvalidArgument,
     "work_path: path '/w/..' contains '..'"),
    ("parent relative", Pyrunc(parent_path="../pre"), {}, InvalidArgument,
     "parent_path: path '../pre' is not absolute"),
    ("parent dotdot", Pyrunc(parent_path="/run/ckpt/img/../pre"), {}, InvalidArgument,
     "parent_path: path '/run/ckpt/img/../pre' contains '..'"),
    ("parent NUL", Pyrunc(parent_path="/p\0"), {}, InvalidArgument, "parent_path: path"),
    ("parent is images dir", Pyrunc(parent_path=IMG + "/"), {}, InvalidArgument,
     "parent_path: '/run/ckpt/img' is the images directory itself"),
    ("parent is given image path", Pyrunc(image_path="/x/y", parent_path="/x//y"), {},
     InvalidArgument, "parent_path: '/x/y' is the images directory itself"),
    ("ghost limit too big", Pyrunc(ghost_limit=2**32), {}, InvalidArgument,
     "ghost_limit: 4294967296 is not in 0..4294967295"),
    ("network lock unknown", Pyrunc(network_lock="pf"), {}, InvalidArgument,
     "network_lock: unknown method 'pf'"),
    ("network lock case", Pyrunc(network_lock="NFTables"), {}, InvalidArgument,
     "network_lock: unknown method 'NFTables'; one of iptables, nftables, skip (or empty)"),
    ("status fd", Pyrunc(status_fd=5), {}, InvalidArgument, "status_fd: 5 names a descriptor"),
    ("annotation bool yes", None, {A + "file-locks": "yes"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.file-locks: 'yes' is not true or false"),
    ("annotation bool True", None, {A + "tcp-close": "True"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.tcp-close: 'True' is not true or false"),
    ("annotation bool empty", None, {A + "pre-dump": ""}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.pre-dump: '' is not true or false"),
    ("annotation leave-running 0", None, {A + "leave-running": "0"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.leave-running: '0' is not true or false"),
    ("annotation unknown", None, {A + "tcp-establishd": "true"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.tcp-establishd: unknown checkpoint option"),
    ("annotation status-fd", None, {A + "status-fd": "3"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.status-fd: unknown checkpoint option"),
    ("annotation ghost suffix", None, {A + "ghost-limit": "1M"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.ghost-limit: '1M' is not a number of bytes"),
    ("annotation ghost negative", None, {A + "ghost-limit": "-1"}, InvalidArgument,
     "is not a number of bytes"),
    ("annotation ghost too big", None, {A + "ghost-limit": str(2**32)}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.ghost-limit: 4294967296 is not in 0..4294967295"),
    ("annotation cgroups", None, {A + "manage-cgroups-mode": "none"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.manage-cgroups-mode: 'none' is not one of"),
    ("annotation empty-ns", None, {A + "empty-ns": "network,ipc"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.empty-ns: runc cannot leave the ipc namespace empty"),
    ("annotation page-server", None, {A + "page-server": "nohost"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.page-server: 'nohost' is not host:port"),
    ("annotation image-path", None, {A + "image-path": "rel"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.image-path: path 'rel' is not absolute"),
    ("annotation parent-path", None, {A + "parent-path": "/a/../b"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.parent-path: path '/a/../b' contains '..'"),
    ("annotation network-lock", None, {A + "network-lock": "ebtables"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.network-lock: unknown method 'ebtables'"),
    ("annotation network-lock none", None, {A + "network-lock": "none"}, InvalidArgument,
     "annotation io.pyrunc.checkpoint.network-lock: unknown method 'none'"),
    ("annotation lazy alone", None, {A + "lazy-pages": "true"}, InvalidArgument,
     "lazy_pages needs page_server"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("msg", "annotations", "error", "message"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refusals(
    msg: Message | None, annotations: dict[str, str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        plan_of(msg, annotations)
    assert message in str(info.value)
    assert type(info.value) is error


def test_unknown_options_type_is_refused() -> None:
    any_ = typeurl.pack(oci_pb2.Options(no_pivot_root=True))
    with pytest.raises(InvalidArgument, match=r"unsupported checkpoint options type "
                       r"'containerd.runc.v1.Options'"):  # fmt: skip
        plan_of(any_)


def test_type_url_without_value_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"unsupported checkpoint options type 'x\.Y'"):
        plan_of(AnyMessage(type_url="x.Y"))


def test_undecodable_options_are_refused() -> None:
    any_ = AnyMessage(type_url="containerd.runc.v1.CheckpointOptions", value=b"\x0a\xff")
    with pytest.raises(InvalidArgument, match="cannot decode"):
        plan_of(any_)


@pytest.mark.parametrize(
    ("path", "message"),
    [("", "path: empty, and no image_path given"), ("tmp/x", "path: path 'tmp/x' is not absolute")],
)
def test_request_path_is_checked(path: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        plan_checkpoint(path, None, {}, default_work_dir=WORK)


def test_empty_request_path_is_fine_with_an_image_path() -> None:
    plan = plan_checkpoint("", typeurl.pack(RuncV1(image_path="/i")), {}, default_work_dir=WORK)
    assert plan.images_dir == "/i"


def test_default_work_dir_is_checked() -> None:
    with pytest.raises(InvalidArgument, match="default_work_dir: path 'w' is not absolute"):
        plan_checkpoint(IMG, None, {}, default_work_dir="w")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images_dir": "rel"}, "image_path: path 'rel' is not absolute"),
        ({"work_dir": "/a/../b"}, "work_path: path '/a/../b' contains '..'"),
        ({"leave_running": False, "pre_dump": True}, "pre_dump cannot be combined with exit"),
        ({"lazy_pages": True}, "lazy_pages needs page_server"),
        ({"ghost_limit": 0}, "ghost_limit: 0 is not in 1..4294967295"),
        ({"ghost_limit": 2**32}, "ghost_limit: 4294967296 is not in 1..4294967295"),
        ({"parent_img": IMG}, "is the images directory itself"),
    ],
)
def test_plan_validates_itself(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"images_dir": IMG, "work_dir": WORK, **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        CheckpointPlan(**fields)


@pytest.mark.parametrize(
    ("address", "port"), [("", 1), ("a b", 1), ("h", 0), ("h", 65536), ("a:b", 1), ("[::1]", 1)]
)
def test_page_server_validates_itself(address: str, port: int) -> None:
    with pytest.raises(InvalidArgument, match="page_server"):
        PageServer(address, port)


def test_page_server_text() -> None:
    assert str(PageServer("::1", 80)) == "[::1]:80"
    assert PageServer.parse("[::1]:80") == PageServer("::1", 80)
    assert PageServer.parse("example.org:27182") == PageServer("example.org", 27182)


# --------------------------------------------------------------------------------------------
# Restore.

BUNDLE = "/run/containerd/io.containerd.runtime.v2.task/default/c1"


def test_restore_args_default_plan() -> None:
    plan = plan_restore(
        RestoreSource("/tmp/ctrd-checkpoint1"), None, {}, default_work_dir=BUNDLE + "/work"
    )
    assert restore_args(plan) == [
        "--image-path", "/tmp/ctrd-checkpoint1", "--work-path", BUNDLE + "/work",
    ]  # fmt: skip


def test_restore_args_carry_what_the_dump_used() -> None:
    dumped = CheckpointPlan(
        images_dir="/dump/host/img",
        work_dir="/dump/host/work",
        leave_running=False,
        tcp_established=True,
        ext_unix_sk=True,
        shell_job=True,
        file_locks=True,
        empty_ns=frozenset({Namespace.NETWORK}),
        manage_cgroups_mode=CgroupMode.SOFT,
        auto_dedup=True,
        parent_img="/dump/host/pre",
        lazy_pages=True,
        page_server=PageServer("10.0.0.1", 27182),
        tcp_close=True,
        tcp_skip_in_flight=True,
        link_remap=True,
        ghost_limit=99,
    )
    source = RestoreSource("/tmp/ctrd-checkpoint2", work_dir="/r/work", lazy_pages=True)
    plan = plan_restore(source, dump_plan(dumped), {}, default_work_dir="/unused")
    assert plan == dataclasses.replace(
        dumped, images_dir="/tmp/ctrd-checkpoint2", work_dir="/r/work", parent_img=""
    )
    assert restore_args(plan) == [
        "--image-path", "/tmp/ctrd-checkpoint2", "--work-path", "/r/work",
        "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks",
        "--empty-ns", "network", "--manage-cgroups-mode", "soft", "--auto-dedup", "--lazy-pages",
    ]  # fmt: skip
    assert criu_config(plan, restore=True) == "tcp-close\nmanage-cgroups=soft\n"


def test_restore_options_join_the_stored_plan() -> None:
    """The one restore translation: tcp_close if either side asks, lazy pages only if the
    restore asks (with its own page server, else the dump's), the work dir of the request
    or the default."""
    stored = dump_plan(
        CheckpointPlan("/a", "/b", lazy_pages=True, page_server=PageServer("10.0.0.1", 1))
    )
    plan = plan_restore(RestoreSource("/c"), stored, {}, default_work_dir="/w")
    assert (plan.lazy_pages, plan.page_server, plan.tcp_close) == (False, None, False)
    plan = plan_restore(
        RestoreSource("/c", lazy_pages=True, tcp_close=True), stored, {}, default_work_dir="/w"
    )
    assert (plan.lazy_pages, plan.page_server, plan.tcp_close) == (
        True, PageServer("10.0.0.1", 1), True,
    )  # fmt: skip
    source = RestoreSource("/c", "/mine//work/", lazy_pages=True, page_server="[::1]:9")
    plan = plan_restore(source, stored, {}, default_work_dir="/w")
    assert (plan.page_server, plan.work_dir) == (PageServer("::1", 9), "/mine/work")
    with pytest.raises(InvalidArgument, match="page_server"):
        plan_restore(
            RestoreSource("/c", lazy_pages=True, page_server="nope"), stored, {},
            default_work_dir="/w",
        )  # fmt: skip


def test_restore_uses_the_stored_plan_not_annotations() -> None:
    stored = dump_plan(CheckpointPlan("/a", "/b", tcp_established=True))
    plan = plan_restore(
        RestoreSource("/c"), stored, {A + "shell-job": "true"}, default_work_dir="/w"
    )
    assert plan.tcp_established and not plan.shell_job


def test_restore_without_stored_plan_uses_annotations() -> None:
    plan = plan_restore(
        RestoreSource("/c"), None, {A + "tcp-established": "true"}, default_work_dir="/w"
    )
    assert plan.tcp_established
    assert (plan.images_dir, plan.work_dir) == ("/c", "/w")


def test_restore_refuses_a_pre_dump() -> None:
    stored = dump_plan(CheckpointPlan("/a", "/b", pre_dump=True))
    with pytest.raises(InvalidArgument, match="holds a pre-dump"):
        plan_restore(RestoreSource("/c"), stored, {}, default_work_dir="/w")


@pytest.mark.parametrize(
    ("source", "default", "message"),
    [
        (RestoreSource("c"), "/w", "checkpoint: path 'c' is not absolute"),
        (RestoreSource("/c", "/b/../../w"), "/w", "work_dir: path '/b/../../w' contains '..'"),
        (RestoreSource("/c"), "w", "work_dir: path 'w' is not absolute"),
    ],
)
def test_plan_restore_checks_paths(source: RestoreSource, default: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        plan_restore(source, None, {}, default_work_dir=default)


# --------------------------------------------------------------------------------------------
# The stored plan.

_SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\0"),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))
_PATH = st.lists(_SEGMENT, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
_HOST = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses().map(str),
)


@st.composite
def plans(draw: st.DrawFn) -> CheckpointPlan:
    images_dir = draw(_PATH)
    parent = draw(st.one_of(st.just(""), _PATH.filter(lambda p: p != images_dir)))
    lazy = draw(st.booleans())
    pre_dump = False if lazy else draw(st.booleans())
    page_server = draw(st.one_of(st.none(), st.builds(PageServer, _HOST, st.integers(1, 65535))))
    if lazy and page_server is None:
        page_server = PageServer("127.0.0.1", 27182)
    return CheckpointPlan(
        images_dir=images_dir,
        work_dir=draw(_PATH),
        leave_running=True if pre_dump else draw(st.booleans()),
        tcp_established=draw(st.booleans()),
        ext_unix_sk=draw(st.booleans()),
        shell_job=draw(st.booleans()),
        file_locks=draw(st.booleans()),
        empty_ns=draw(st.frozensets(st.sampled_from(Namespace))),
        manage_cgroups_mode=draw(st.one_of(st.none(), st.sampled_from(CgroupMode))),
        auto_dedup=draw(st.booleans()),
        pre_dump=pre_dump,
        track_mem=draw(st.booleans()),
        parent_img=parent,
        lazy_pages=lazy,
        page_server=page_server,
        tcp_close=draw(st.booleans()),
        tcp_skip_in_flight=draw(st.booleans()),
        link_remap=draw(st.booleans()),
        ghost_limit=draw(st.one_of(st.none(), st.integers(1, 2**32 - 1))),
        network_lock=draw(st.one_of(st.none(), st.sampled_from(NetworkLock))),
    )


@given(plans())
def test_stored_plan_round_trip(plan: CheckpointPlan) -> None:
    data = dump_plan(plan)
    assert load_plan(data) == plan
    assert dump_plan(load_plan(data)) == data
    assert json.loads(data)["version"] == 1
    checkpoint_args(plan)  # every valid plan renders
    criu_config(plan, restore=False)


def test_stored_plan_is_deterministic() -> None:
    plan = CheckpointPlan(IMG, WORK, empty_ns=frozenset({Namespace.NETWORK}), ghost_limit=3)
    assert dump_plan(plan) == dump_plan(dataclasses.replace(plan))
    assert dump_plan(plan).startswith(b'{\n  "auto_dedup": false,')
    assert dump_plan(plan).endswith(b"}\n")


def _stored(**changes: object) -> bytes:
    doc = json.loads(dump_plan(CheckpointPlan(IMG, WORK)))
    doc.update(changes)
    return json.dumps(doc).encode()


def _without(key: str) -> bytes:
    doc = json.loads(dump_plan(CheckpointPlan(IMG, WORK)))
    del doc[key]
    return json.dumps(doc).encode()


BAD_STORED: list[tuple[str, bytes, str]] = [
    ("not json", b"{", "not JSON"),
    ("not utf-8", b"\xff\xfe", "not JSON"),
    ("a list", b"[1]", "not a JSON object"),
    ("no version", _without("version"), "unknown version None"),
    ("version 2", _stored(version=2), "unknown version 2 (this shim reads 1)"),
    ("version string", _stored(version="1"), "unknown version '1'"),
    ("version bool", _stored(version=True), "unknown version True"),
    ("missing key", _without("tcp_close"), "missing keys ['tcp_close'], unknown keys []"),
    ("unknown key", _stored(extra=1), "missing keys [], unknown keys ['extra']"),
    ("bool as string", _stored(leave_running="true"), "leave_running is not a bool: 'true'"),
    ("bool as int", _stored(file_locks=1), "file_locks is not a bool: 1"),
    ("path as number", _stored(images_dir=1), "images_dir is not a str: 1"),
    ("relative path", _stored(work_dir="w"), "work_path: path 'w' is not absolute"),
    ("ghost as string", _stored(ghost_limit="5"), "ghost_limit is not a number: '5'"),
    ("ghost as bool", _stored(ghost_limit=True), "ghost_limit is not a number: True"),
    ("ghost zero", _stored(ghost_limit=0), "ghost_limit: 0 is not in 1..4294967295"),
    ("empty ns string", _stored(empty_ns="network"), "empty_ns is not a list of names"),
    ("empty ns pid", _stored(empty_ns=["pid"]), "runc cannot leave the pid namespace empty"),
    ("cgroup mode", _stored(manage_cgroups_mode="props"), "manage_cgroups_mode: 'props'"),
    ("cgroup mode empty", _stored(manage_cgroups_mode=""), "manage_cgroups_mode is empty"),
    ("page server", _stored(page_server="x"), "page_server: 'x' is not host:port"),
    ("network lock", _stored(network_lock="pf"), "network_lock: unknown method 'pf'"),
    ("network lock empty", _stored(network_lock=""), "network_lock is empty"),
    ("network lock number", _stored(network_lock=2), "network_lock is not a str: 2"),
    ("contradiction", _stored(leave_running=False, pre_dump=True),
     "pre_dump cannot be combined with exit"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in BAD_STORED], ids=[r[0] for r in BAD_STORED]
)
def test_bad_stored_plans_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_plan(data)
    assert f"stored plan {STORED_PLAN}" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("lock", list(NetworkLock), ids=lambda m: m.value)
def test_stored_network_lock_is_restored_with_the_plan(lock: NetworkLock) -> None:
    plan = load_plan(_stored(network_lock=lock.value))
    assert plan.network_lock is lock
    assert criu_config(plan, restore=True) == ""  # CRIU takes it from the images


# --------------------------------------------------------------------------------------------
# Against the installed runc: every flag we render exists (skipped without runc).

_RUNC = shutil.which("runc")


def _help(command: str) -> str:
    assert _RUNC is not None
    done = subprocess.run(
        [_RUNC, command, "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def _flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


@pytest.mark.skipif(_RUNC is None, reason="runc not installed")
def test_every_checkpoint_flag_exists_in_runc() -> None:
    text = _help("checkpoint")
    full = CheckpointPlan(
        IMG, WORK, tcp_established=True, ext_unix_sk=True, shell_job=True, file_locks=True,
        empty_ns=frozenset({Namespace.NETWORK}), manage_cgroups_mode=CgroupMode.FULL,
        auto_dedup=True, parent_img="/p", lazy_pages=True, page_server=PageServer("h", 1),
    )  # fmt: skip
    flags = _flags(checkpoint_args(full)) | {"--pre-dump"}
    assert flags == {
        "--image-path", "--work-path", "--parent-path", "--leave-running", "--tcp-established",
        "--ext-unix-sk", "--shell-job", "--file-locks", "--empty-ns", "--manage-cgroups-mode",
        "--auto-dedup", "--pre-dump", "--lazy-pages", "--page-server", "--status-fd",
    }  # fmt: skip
    for flag in flags:
        assert f"{flag} " in text, flag


@pytest.mark.skipif(_RUNC is None, reason="runc not installed")
def test_every_restore_flag_exists_in_runc() -> None:
    text = _help("restore")
    full = CheckpointPlan(
        IMG, WORK, tcp_established=True, ext_unix_sk=True, shell_job=True, file_locks=True,
        empty_ns=frozenset({Namespace.NETWORK}), manage_cgroups_mode=CgroupMode.FULL,
        auto_dedup=True, lazy_pages=True, page_server=PageServer("h", 1),
    )  # fmt: skip
    criu_args = tuple(restore_args(full))
    opts = RestoreOpts(
        pathlib.Path("/b"), pathlib.Path("/p"), criu_args, console_socket="/c", no_pivot=True
    )
    for flag in _flags(opts.args()):
        assert f"{flag} " in text or f"{flag}," in text, flag


# --------------------------------------------------------------------------------------------
# Surface and documentation.


def test_package_reexports_the_plan_api() -> None:
    assert set(shim.checkpoint.__all__) == set(planmod.__all__)
    for name in planmod.__all__:
        assert getattr(shim.checkpoint, name) is getattr(planmod, name)


def test_values_are_frozen_slotted_dataclasses() -> None:
    for cls in (CheckpointPlan, PageServer):
        params = getattr(cls, "__dataclass_params__")  # noqa: B009
        assert params.frozen and "__slots__" in cls.__dict__


def test_docs_name_every_annotation_and_option() -> None:
    text = DOC.read_text(encoding="utf-8")
    for key in ANNOTATIONS:
        assert f"`{key.removeprefix(A)}`" in text, key
    for field in Pyrunc.DESCRIPTOR.fields:
        assert f"`{field.name}`" in text, field.name
    for field in dataclasses.fields(CheckpointPlan):
        assert f"`{field.name}`" in text, field.name
