"""Tests of the generated protobuf modules in shim.api (see hack/gen-protos.sh).

They pin the facts other code depends on: module paths, proto full names (which
are the Any type URLs containerd uses), and field numbers taken from containerd
1.6.20 / ttrpc 1.1.1 / CRIU 4.1.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
API = ROOT / "shim" / "api"

MODULES = [
    "shim.api.cgroups.v1.metrics_pb2",
    "shim.api.containerd.events.task_pb2",
    "shim.api.containerd.linux.runctypes.runc_pb2",
    "shim.api.containerd.runc.options.oci_pb2",
    "shim.api.containerd.services.containers.v1.containers_pb2",
    "shim.api.containerd.services.content.v1.content_pb2",
    "shim.api.containerd.services.diff.v1.diff_pb2",
    "shim.api.containerd.services.images.v1.images_pb2",
    "shim.api.containerd.services.leases.v1.leases_pb2",
    "shim.api.containerd.services.snapshots.v1.snapshots_pb2",
    "shim.api.containerd.services.tasks.v1.tasks_pb2",
    "shim.api.containerd.services.ttrpc.events.v1.events_pb2",
    "shim.api.containerd.task.v2.shim_pb2",
    "shim.api.containerd.types.descriptor_pb2",
    "shim.api.containerd.types.metrics_pb2",
    "shim.api.containerd.types.mount_pb2",
    "shim.api.containerd.types.task.task_pb2",
    "shim.api.criu.rpc_pb2",
    "shim.api.google.rpc.status_pb2",
    "shim.api.k8s.cri.runtime.v1.api_pb2",
    "shim.api.pyrunc.migrate.v1.agent_pb2",
    "shim.api.pyrunc.v1.checkpoint_pb2",
    "shim.api.ttrpc.ttrpc_pb2",
]


def mod(name: str) -> Any:
    return importlib.import_module(f"shim.api.{name}")


def test_module_list_matches_tree() -> None:
    found = sorted(
        "shim.api." + ".".join(p.relative_to(API).with_suffix("").parts)
        for p in API.rglob("*_pb2.py")
    )
    assert found == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_import(name: str) -> None:
    module = importlib.import_module(name)
    assert module.DESCRIPTOR is not None
    # Classes report the module they live in, not protoc's root-relative name.
    for msg in module.DESCRIPTOR.message_types_by_name:
        assert getattr(module, msg).__module__ == name


def test_every_package_dir_has_init() -> None:
    for d in [API, *(p for p in API.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        assert (d / "__init__.py").is_file(), d


def test_no_root_relative_imports() -> None:
    allowed = r"(?!(?:google\.protobuf|shim\.api|collections|typing|datetime)\b)"
    pattern = re.compile(rf"^(?:from|import) {allowed}\S+", re.MULTILINE)
    for path in API.rglob("*_pb2.py*"):
        bad = [m[0] for m in pattern.finditer(path.read_text())]
        assert not bad, f"{path}: {bad}"


@pytest.mark.parametrize(
    ("module", "message", "full_name"),
    [
        ("containerd.task.v2.shim_pb2", "CreateTaskRequest",
         "containerd.task.v2.CreateTaskRequest"),
        ("containerd.events.task_pb2", "TaskExit", "containerd.events.TaskExit"),
        ("containerd.runc.options.oci_pb2", "CheckpointOptions",
         "containerd.runc.v1.CheckpointOptions"),
        ("containerd.runc.options.oci_pb2", "Options", "containerd.runc.v1.Options"),
        ("containerd.runc.options.oci_pb2", "ProcessDetails", "containerd.runc.v1.ProcessDetails"),
        ("containerd.linux.runctypes.runc_pb2", "CreateOptions",
         "containerd.linux.runc.CreateOptions"),
        ("cgroups.v1.metrics_pb2", "Metrics", "io.containerd.cgroups.v1.Metrics"),
        ("containerd.services.ttrpc.events.v1.events_pb2", "ForwardRequest",
         "containerd.services.events.ttrpc.v1.ForwardRequest"),
        ("containerd.services.ttrpc.events.v1.events_pb2", "Envelope",
         "containerd.services.events.ttrpc.v1.Envelope"),
        ("pyrunc.v1.checkpoint_pb2", "CheckpointOptions", "pyrunc.v1.CheckpointOptions"),
        ("containerd.types.mount_pb2", "Mount", "containerd.types.Mount"),
        ("containerd.types.task.task_pb2", "ProcessInfo", "containerd.v1.types.ProcessInfo"),
        ("ttrpc.ttrpc_pb2", "Request", "ttrpc.Request"),
        ("ttrpc.ttrpc_pb2", "Response", "ttrpc.Response"),
        ("google.rpc.status_pb2", "Status", "google.rpc.Status"),
        ("criu.rpc_pb2", "criu_opts", "criu_opts"),
        ("criu.rpc_pb2", "criu_req", "criu_req"),
        ("criu.rpc_pb2", "criu_resp", "criu_resp"),
    ],
)
def test_full_names(module: str, message: str, full_name: str) -> None:
    assert getattr(mod(module), message).DESCRIPTOR.full_name == full_name


def test_event_messages() -> None:
    events = mod("containerd.events.task_pb2")
    names = {
        "TaskCreate", "TaskStart", "TaskDelete", "TaskIO", "TaskExit", "TaskOOM",
        "TaskExecAdded", "TaskExecStarted", "TaskPaused", "TaskResumed", "TaskCheckpointed",
    }
    assert set(events.DESCRIPTOR.message_types_by_name) == names


def test_task_service() -> None:
    shim = mod("containerd.task.v2.shim_pb2")
    service = shim.DESCRIPTOR.services_by_name["Task"]
    assert service.full_name == "containerd.task.v2.Task"
    methods = {m.name: (m.input_type.name, m.output_type.full_name) for m in service.methods}
    empty = "google.protobuf.Empty"
    assert methods == {
        "State": ("StateRequest", "containerd.task.v2.StateResponse"),
        "Create": ("CreateTaskRequest", "containerd.task.v2.CreateTaskResponse"),
        "Start": ("StartRequest", "containerd.task.v2.StartResponse"),
        "Delete": ("DeleteRequest", "containerd.task.v2.DeleteResponse"),
        "Pids": ("PidsRequest", "containerd.task.v2.PidsResponse"),
        "Pause": ("PauseRequest", empty),
        "Resume": ("ResumeRequest", empty),
        "Checkpoint": ("CheckpointTaskRequest", empty),
        "Kill": ("KillRequest", empty),
        "Exec": ("ExecProcessRequest", empty),
        "ResizePty": ("ResizePtyRequest", empty),
        "CloseIO": ("CloseIORequest", empty),
        "Update": ("UpdateTaskRequest", empty),
        "Wait": ("WaitRequest", "containerd.task.v2.WaitResponse"),
        "Stats": ("StatsRequest", "containerd.task.v2.StatsResponse"),
        "Connect": ("ConnectRequest", "containerd.task.v2.ConnectResponse"),
        "Shutdown": ("ShutdownRequest", empty),
    }


def test_events_service() -> None:
    events = mod("containerd.services.ttrpc.events.v1.events_pb2")
    service = events.DESCRIPTOR.services_by_name["Events"]
    assert service.full_name == "containerd.services.events.ttrpc.v1.Events"
    (forward,) = service.methods
    assert forward.name == "Forward"
    assert forward.input_type.full_name == "containerd.services.events.ttrpc.v1.ForwardRequest"
    assert forward.output_type.full_name == "google.protobuf.Empty"


def number(module: str, message: str, field: str) -> int:
    result: int = getattr(mod(module), message).DESCRIPTOR.fields_by_name[field].number
    return result


@pytest.mark.parametrize(
    ("module", "message", "field", "expected"),
    [
        ("containerd.task.v2.shim_pb2", "CreateTaskRequest", "rootfs", 3),
        ("containerd.task.v2.shim_pb2", "CreateTaskRequest", "checkpoint", 8),
        ("containerd.task.v2.shim_pb2", "CreateTaskRequest", "options", 10),
        ("containerd.task.v2.shim_pb2", "StateResponse", "status", 4),
        ("containerd.task.v2.shim_pb2", "StateResponse", "exited_at", 10),
        ("containerd.task.v2.shim_pb2", "StateResponse", "exec_id", 11),
        ("containerd.task.v2.shim_pb2", "DeleteResponse", "exited_at", 3),
        ("containerd.task.v2.shim_pb2", "WaitResponse", "exited_at", 2),
        ("containerd.task.v2.shim_pb2", "KillRequest", "all", 4),
        ("containerd.task.v2.shim_pb2", "CheckpointTaskRequest", "options", 3),
        ("containerd.task.v2.shim_pb2", "UpdateTaskRequest", "annotations", 3),
        ("containerd.task.v2.shim_pb2", "ConnectResponse", "version", 3),
        ("containerd.events.task_pb2", "TaskExit", "exited_at", 5),
        ("containerd.events.task_pb2", "TaskDelete", "id", 5),
        ("containerd.events.task_pb2", "TaskCreate", "pid", 6),
        ("containerd.services.ttrpc.events.v1.events_pb2", "Envelope", "event", 4),
        ("containerd.runc.options.oci_pb2", "Options", "root", 7),
        ("containerd.runc.options.oci_pb2", "Options", "criu_path", 8),
        ("containerd.runc.options.oci_pb2", "Options", "criu_work_path", 11),
        ("containerd.runc.options.oci_pb2", "CheckpointOptions", "image_path", 8),
        ("containerd.runc.options.oci_pb2", "CheckpointOptions", "work_path", 9),
        ("containerd.linux.runctypes.runc_pb2", "CheckpointOptions", "work_path", 8),
        ("containerd.linux.runctypes.runc_pb2", "CheckpointOptions", "image_path", 9),
        ("containerd.linux.runctypes.runc_pb2", "CreateOptions", "criu_image_path", 13),
        ("cgroups.v1.metrics_pb2", "Metrics", "memory_oom_control", 9),
        ("cgroups.v1.metrics_pb2", "MemoryStat", "kernel_tcp", 36),
        ("ttrpc.ttrpc_pb2", "Request", "timeout_nano", 4),
        ("ttrpc.ttrpc_pb2", "Request", "metadata", 5),
        ("ttrpc.ttrpc_pb2", "Response", "payload", 2),
        ("criu.rpc_pb2", "criu_opts", "empty_ns", 38),
        ("criu.rpc_pb2", "criu_opts", "lazy_pages", 48),
        ("criu.rpc_pb2", "criu_opts", "status_fd", 49),
        ("criu.rpc_pb2", "criu_opts", "images_dir", 68),
        ("criu.rpc_pb2", "criu_opts", "network_lock", 64),
        ("criu.rpc_pb2", "criu_resp", "cr_errmsg", 9),
        ("criu.rpc_pb2", "criu_req", "pid", 6),
        ("pyrunc.v1.checkpoint_pb2", "CheckpointOptions", "parent_path", 20),
        ("pyrunc.v1.checkpoint_pb2", "CheckpointOptions", "track_mem", 31),
    ],
)
def test_field_numbers(module: str, message: str, field: str, expected: int) -> None:
    assert number(module, message, field) == expected


def test_enums() -> None:
    task = mod("containerd.types.task.task_pb2")
    assert dict(task.Status.items()) == {
        "UNKNOWN": 0, "CREATED": 1, "RUNNING": 2, "STOPPED": 3, "PAUSED": 4, "PAUSING": 5,
    }
    rpc = mod("criu.rpc_pb2")
    assert rpc.criu_req_type.Value("SINGLE_PRE_DUMP") == 13
    assert rpc.criu_cg_mode.Value("STRICT") == 5
    assert rpc.criu_network_lock_method.Value("SKIP") == 3


def test_criu_proto2_defaults() -> None:
    rpc = mod("criu.rpc_pb2")
    opts = rpc.criu_opts()
    assert opts.images_dir_fd == -1
    assert opts.log_level == 2
    assert opts.ghost_limit == 0x100000
    assert not opts.HasField("empty_ns")
    assert not opts.IsInitialized()  # images_dir_fd is required
    opts.images_dir_fd = 3
    req = rpc.criu_req(type=rpc.DUMP, opts=opts)
    assert rpc.criu_req.FromString(req.SerializeToString()) == req


def test_create_task_request_round_trip() -> None:
    shim = mod("containerd.task.v2.shim_pb2")
    mount = mod("containerd.types.mount_pb2")
    oci = mod("containerd.runc.options.oci_pb2")
    req = shim.CreateTaskRequest(
        id="c1",
        bundle="/run/containerd/io.containerd.runtime.v2.task/default/c1",
        rootfs=[mount.Mount(type="overlay", source="overlay", options=["lowerdir=/a", "ro"])],
        terminal=True,
        stdin="/run/fifo/in",
        stdout="/run/fifo/out",
        checkpoint="/var/lib/ckpt",
    )
    req.options.Pack(oci.Options(criu_path="/usr/local/sbin/criu"))
    # containerd's typeurl uses the bare full name as the type URL.
    req.options.type_url = "containerd.runc.v1.Options"
    data = req.SerializeToString()
    back = shim.CreateTaskRequest.FromString(data)
    assert back == req
    assert back.rootfs[0].options == ["lowerdir=/a", "ro"]
    assert back.options.type_url == "containerd.runc.v1.Options"
    assert oci.Options.FromString(back.options.value).criu_path == "/usr/local/sbin/criu"
    # Field 8 (checkpoint), wire type 2: tag byte 0x42.
    assert b"\x42\x0d/var/lib/ckpt" in data


def test_state_response_exited_at_go_zero_time() -> None:
    shim = mod("containerd.task.v2.shim_pb2")
    task = mod("containerd.types.task.task_pb2")
    resp = shim.StateResponse(id="c1", pid=42, status=task.RUNNING)
    resp.exited_at.seconds = -62135596800
    back = shim.StateResponse.FromString(resp.SerializeToString())
    assert back.exited_at.seconds == -62135596800
    assert back.status == task.RUNNING


SHARED_CHECKPOINT_FIELDS = [
    "exit", "open_tcp", "external_unix_sockets", "terminal", "file_locks",
    "empty_namespaces", "cgroups_mode", "image_path", "work_path",
]


def test_pyrunc_checkpoint_options_superset() -> None:
    ours = mod("pyrunc.v1.checkpoint_pb2").CheckpointOptions.DESCRIPTOR
    theirs = mod("containerd.runc.options.oci_pb2").CheckpointOptions.DESCRIPTOR
    assert [f.name for f in theirs.fields] == SHARED_CHECKPOINT_FIELDS
    for f in theirs.fields:
        o = ours.fields_by_name[f.name]
        assert (o.number, o.type, o.is_repeated) == (f.number, f.type, f.is_repeated), f.name
    assert sorted(f.number for f in theirs.fields) == list(range(1, 10))
    extra = {f.name: f.number for f in ours.fields if f.name not in SHARED_CHECKPOINT_FIELDS}
    assert extra == {
        "parent_path": 20, "pre_dump": 21, "auto_dedup": 22, "lazy_pages": 23,
        "page_server": 24, "status_fd": 25, "tcp_close": 26, "tcp_skip_in_flight": 27,
        "link_remap": 28, "ghost_limit": 29, "network_lock": 30, "track_mem": 31,
        "tls_cacert": 32, "tls_cert": 33, "tls_key": 34, "tls_no_cn_verify": 35,
    }


def test_pyrunc_checkpoint_options_wire_compatible() -> None:
    ours_cls = mod("pyrunc.v1.checkpoint_pb2").CheckpointOptions
    theirs_cls = mod("containerd.runc.options.oci_pb2").CheckpointOptions
    shared: dict[str, Any] = {
        "exit": True, "open_tcp": True, "external_unix_sockets": True, "terminal": True,
        "file_locks": True, "empty_namespaces": ["network"], "cgroups_mode": "soft",
        "image_path": "/img", "work_path": "/work",
    }
    theirs = theirs_cls(**shared)
    as_ours = ours_cls.FromString(theirs.SerializeToString())
    for name, value in shared.items():
        assert getattr(as_ours, name) == value, name
    assert as_ours == ours_cls(**shared)

    ours = ours_cls(**shared, parent_path="../pre1", pre_dump=True, ghost_limit=1 << 20,
                    network_lock="nftables", status_fd=-1)
    as_theirs = theirs_cls.FromString(ours.SerializeToString())
    known = theirs_cls()
    known.CopyFrom(as_theirs)
    known.DiscardUnknownFields()
    assert known == theirs
    # The extra fields survive a round trip through the narrower message as unknown fields.
    assert ours_cls.FromString(as_theirs.SerializeToString()) == ours


def test_runctypes_checkpoint_options_differ() -> None:
    """The old v1 type swaps image_path/work_path: bytes must not be parsed as the other."""
    old = mod("containerd.linux.runctypes.runc_pb2").CheckpointOptions
    new = mod("containerd.runc.options.oci_pb2").CheckpointOptions
    data = old(image_path="/img", work_path="/work").SerializeToString()
    assert new.FromString(data).image_path == "/work"


def test_ttrpc_envelope() -> None:
    ttrpc = mod("ttrpc.ttrpc_pb2")
    status = mod("google.rpc.status_pb2")
    req = ttrpc.Request(
        service="containerd.task.v2.Task", method="Connect", payload=b"\x0a\x02c1",
        timeout_nano=5_000_000_000,
        metadata=[ttrpc.KeyValue(key="containerd-namespace-ttrpc", value="default")],
    )
    assert ttrpc.Request.FromString(req.SerializeToString()) == req
    resp = ttrpc.Response(status=status.Status(code=5, message="not found"))
    assert resp.SerializeToString() == b"\x0a\x0d\x08\x05\x12\x09not found"


def _pinned_grpcio_tools() -> str:
    m = re.search(r'"grpcio-tools==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert m is not None
    return m[1]


def test_generated_code_is_up_to_date() -> None:
    try:
        have = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("grpcio-tools not installed")
    if have != _pinned_grpcio_tools():
        pytest.skip(f"grpcio-tools {have} is not the pinned version")
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "gen-protos.sh"), "--check"],
        env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
