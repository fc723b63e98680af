"""The checkpoint option table (shim.checkpoint.options) against everything made from it or
checked by it: the request messages, the plan, the annotations, the stored plan, runc's flags,
the CRIU configuration, the pyrunc flags and the docs."""

from __future__ import annotations

import dataclasses
import pathlib

from shim.api.containerd.linux.runctypes import runc_pb2
from shim.api.containerd.runc.options import oci_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint import plan as planmod
from shim.checkpoint.options import BY_PLAN, OPTIONS, Kind, Side
from shim.checkpoint.plan import (
    ANNOTATION_PREFIX,
    ANNOTATIONS,
    CgroupMode,
    CheckpointPlan,
    Namespace,
    NetworkLock,
    PageServer,
    checkpoint_args,
    criu_config,
    dump_plan,
    load_plan,
    restore_args,
)
from shim.ctl._args import CheckpointCommand

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "checkpoint-options.md"

# A stored plan as the shim wrote it before the table existed: old checkpoints must restore.
STORED_BEFORE = (
    b'{\n  "auto_dedup": true,\n  "empty_ns": [\n    "network"\n  ],\n  "ext_unix_sk": true,\n'
    b'  "file_locks": true,\n  "ghost_limit": 99,\n  "images_dir": "/img",\n'
    b'  "lazy_pages": false,\n  "leave_running": true,\n  "link_remap": true,\n'
    b'  "manage_cgroups_mode": "soft",\n  "network_lock": "nftables",\n'
    b'  "page_server": "10.0.0.1:27",\n  "parent_img": "/pre",\n  "pre_dump": false,\n'
    b'  "shell_job": true,\n  "tcp_close": true,\n  "tcp_established": true,\n'
    b'  "tcp_skip_in_flight": true,\n  "track_mem": true,\n  "version": 1,\n'
    b'  "work_dir": "/work"\n}\n'
)


def test_one_row_per_plan_field_and_per_request_field() -> None:
    assert len(OPTIONS) == len({o.plan for o in OPTIONS}) == len({o.request for o in OPTIONS})
    assert set(BY_PLAN) == {f.name for f in dataclasses.fields(CheckpointPlan)}
    asked = {f.name for f in dataclasses.fields(planmod._Asked)}
    assert asked == {o.request for o in OPTIONS}
    extended = {f.name for f in checkpoint_pb2.CheckpointOptions.DESCRIPTOR.fields}
    assert extended - {o.request for o in OPTIONS} == {"status_fd"}
    for message in (oci_pb2.CheckpointOptions, runc_pb2.CheckpointOptions):
        names = {f.name for f in message.DESCRIPTOR.fields}
        assert names == {o.request for o in OPTIONS if o.containerd}, message


def test_annotations_come_from_the_table() -> None:
    assert {ANNOTATION_PREFIX + o.annotation for o in OPTIONS if o.annotation} == ANNOTATIONS
    # the page server's TLS: from the request only, never from a pod's annotations
    assert {o.request for o in OPTIONS if not o.annotation} == {
        "tls_cacert", "tls_cert", "tls_key", "tls_no_cn_verify"}


def test_a_stored_plan_of_before_the_table_loads_and_dumps_the_same() -> None:
    plan = load_plan(STORED_BEFORE)
    assert plan == CheckpointPlan(
        "/img", "/work", tcp_established=True, ext_unix_sk=True, shell_job=True,
        file_locks=True, empty_ns=frozenset({Namespace.NETWORK}),
        manage_cgroups_mode=CgroupMode.SOFT, auto_dedup=True, parent_img="/pre",
        page_server=PageServer("10.0.0.1", 27), tcp_close=True, tcp_skip_in_flight=True,
        link_remap=True, ghost_limit=99, network_lock=NetworkLock.NFTABLES,
    )  # fmt: skip
    assert dump_plan(plan) == STORED_BEFORE


def _full_plan(**changes: object) -> CheckpointPlan:
    full = CheckpointPlan(
        "/img", "/work", tcp_established=True, ext_unix_sk=True, shell_job=True,
        file_locks=True, empty_ns=frozenset({Namespace.NETWORK}),
        manage_cgroups_mode=CgroupMode.FULL, auto_dedup=True, parent_img="/pre",
        lazy_pages=True, page_server=PageServer("h", 1), tcp_close=True,
        tcp_skip_in_flight=True, link_remap=True, ghost_limit=99,
        network_lock=NetworkLock.NFTABLES, tls_cacert="/ca.pem", tls_cert="/c.pem",
        tls_key="/k.pem", tls_no_cn_verify=True,
    )  # fmt: skip
    return dataclasses.replace(full, **changes)  # type: ignore[arg-type]


def test_runc_flags_and_criu_keys_are_what_the_renderers_use() -> None:
    """Each option with a runc flag is rendered as that flag; each without one as its CRIU
    configuration key; restore carries exactly the options the table marks for both."""
    dump = checkpoint_args(_full_plan())
    pre = checkpoint_args(_full_plan(pre_dump=True, lazy_pages=False, page_server=None,
                                     tls_cacert="", tls_cert="", tls_key="",
                                     tls_no_cn_verify=False))
    config = criu_config(_full_plan(parent_img=""), restore=False)
    restore = restore_args(_full_plan(parent_img=""))
    for o in OPTIONS:
        if o.kind is Kind.EXIT:
            assert o.runc in dump  # --leave-running, the default
        elif o.runc:
            assert o.runc in dump or o.runc in pre, o
            assert (o.runc in restore) == (o.side is Side.BOTH and o.plan != "page_server"), o
        else:
            assert o.criu in config, o


def test_pyrunc_flags_come_from_the_table() -> None:
    fields = {f.name for f in dataclasses.fields(CheckpointCommand)}
    assert {o.dest for o in OPTIONS if o.flag} == fields - {"globals", "container_id", "quiet"}


def test_docs_name_every_option_by_every_name() -> None:
    text = DOC.read_text(encoding="utf-8")
    for o in OPTIONS:
        for name in (o.plan, o.request, o.annotation, *([o.runc] if o.runc else [])):
            assert f"`{name}" in text, (o.plan, name)
