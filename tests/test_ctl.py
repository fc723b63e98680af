"""Unit tests of ``pyrunc`` (shim.ctl): argv -> options, paths, refusals, calls, errors.

Strategy: the flag -> field mapping is one table per message; usage errors are a table of
argv that argparse must refuse. The calls each command makes are checked twice: with a fake
:class:`~shim.ctl._commands.API` (order, clean-up on failure) and end to end against an
in-process gRPC server on a unix socket that implements containerd's Tasks, Containers and
Snapshots services (wire format, ``containerd-namespace`` header, Any type URLs, status ->
one-line message). No containerd, no root.
"""

from __future__ import annotations

import io
import os
import pathlib
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import pytest

from shim.api.containerd.types import descriptor_pb2, mount_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.ctl._args import (
    CheckpointCommand,
    Globals,
    RestoreCommand,
    TasksCommand,
    parse_args,
    parse_host_port,
    parse_size,
)
from shim.ctl._client import ContainerInfo, Descriptor, TaskInfo, TaskStatus
from shim.ctl._commands import exit_code, run_checkpoint, run_restore, run_tasks
from shim.ctl._errors import CtlError, one_line
from shim.ctl._main import main
from shim.ctl._options import checkpoint_any, checkpoint_options, restore_any, restore_options

ROOT = pathlib.Path(__file__).resolve().parent.parent
CWD = "/work/dir"
ENV: dict[str, str] = {}


def checkpoint(*argv: str) -> CheckpointCommand:
    cmd = parse_args(["checkpoint", "c1", *argv], environ=ENV, cwd=CWD)
    assert isinstance(cmd, CheckpointCommand)
    return cmd


def restore(*argv: str) -> RestoreCommand:
    cmd = parse_args(["restore", "c1", *argv], environ=ENV, cwd=CWD)
    assert isinstance(cmd, RestoreCommand)
    return cmd


# --- flag -> CheckpointOptions field -----------------------------------------------------

CHECKPOINT_TABLE: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (["--exit"], {"exit": True}),
    (["--tcp-established"], {"open_tcp": True}),
    (["--ext-unix-sk"], {"external_unix_sockets": True}),
    (["--shell-job"], {"terminal": True}),
    (["--file-locks"], {"file_locks": True}),
    (["--empty-ns", "network"], {"empty_namespaces": ["network"]}),
    (["--empty-ns", "network", "--empty-ns", "ipc"], {"empty_namespaces": ["network", "ipc"]}),
    (["--manage-cgroups-mode", "soft"], {"cgroups_mode": "soft"}),
    (["--manage-cgroups-mode", "full"], {"cgroups_mode": "full"}),
    (["--manage-cgroups-mode", "strict"], {"cgroups_mode": "strict"}),
    (["--manage-cgroups-mode", "ignore"], {"cgroups_mode": "ignore"}),
    (["--image-path", "/ckpt/img"], {"image_path": "/ckpt/img"}),
    (["--work-path", "/ckpt/work"], {"work_path": "/ckpt/work"}),
    (["--auto-dedup"], {"auto_dedup": True}),
    (["--pre-dump"], {"pre_dump": True}),
    (["--parent-path", "/ckpt/pre1"], {"parent_path": "/ckpt/pre1"}),
    (["--lazy-pages"], {"lazy_pages": True}),
    (["--page-server", "10.0.0.2:27000"], {"page_server": "10.0.0.2:27000"}),
    (["--page-server", "[fd00::2]:27000"], {"page_server": "[fd00::2]:27000"}),
    (["--page-server", "dst-host:1"], {"page_server": "dst-host:1"}),
    (["--tcp-close"], {"tcp_close": True}),
    (["--tcp-skip-in-flight"], {"tcp_skip_in_flight": True}),
    (["--link-remap"], {"link_remap": True}),
    (["--ghost-limit", "4096"], {"ghost_limit": 4096}),
    (["--ghost-limit", "2M"], {"ghost_limit": 2 << 20}),
    (["--network-lock", "iptables"], {"network_lock": "iptables"}),
    (["--network-lock", "nftables"], {"network_lock": "nftables"}),
    (["--network-lock", "skip"], {"network_lock": "skip"}),
    (
        ["--pre-dump", "--image-path", "/c/pre1", "--work-path", "/c/w", "--auto-dedup",
         "--tcp-established", "--file-locks", "--empty-ns", "network", "--quiet"],
        {"pre_dump": True, "image_path": "/c/pre1", "work_path": "/c/w", "auto_dedup": True,
         "open_tcp": True, "file_locks": True, "empty_namespaces": ["network"]},
    ),
    (
        ["--exit", "--lazy-pages", "--page-server", "h:9", "--parent-path", "/c/pre1",
         "--shell-job", "--ext-unix-sk", "--link-remap", "--tcp-close", "--ghost-limit", "1K",
         "--network-lock", "skip", "--manage-cgroups-mode", "strict", "--tcp-skip-in-flight"],
        {"exit": True, "lazy_pages": True, "page_server": "h:9", "parent_path": "/c/pre1",
         "terminal": True, "external_unix_sockets": True, "link_remap": True,
         "tcp_close": True, "ghost_limit": 1024, "network_lock": "skip",
         "cgroups_mode": "strict", "tcp_skip_in_flight": True},
    ),
]


@pytest.mark.parametrize(("argv", "fields"), CHECKPOINT_TABLE, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_checkpoint_flags_to_options(argv: list[str], fields: dict[str, Any]) -> None:
    assert checkpoint_options(checkpoint(*argv)) == checkpoint_pb2.CheckpointOptions(**fields)


def test_checkpoint_table_covers_every_field_but_status_fd_and_track_mem() -> None:
    covered = {name for _, fields in CHECKPOINT_TABLE for name in fields}
    every = {f.name for f in checkpoint_pb2.CheckpointOptions.DESCRIPTOR.fields}
    # and the page server's TLS, which `pyrunc migrate` sets (no pyrunc checkpoint flag)
    assert every - covered == {"status_fd", "track_mem", "tls_cacert", "tls_cert", "tls_key",
                               "tls_no_cn_verify"}


RESTORE_TABLE: list[tuple[list[str], dict[str, Any]]] = [
    (["--image-path", "/ckpt/img"], {"image_path": "/ckpt/img"}),
    (["--image-path", "/i", "--work-path", "/w"], {"image_path": "/i", "work_path": "/w"}),
    (["--image-path", "/i", "--tcp-close"], {"image_path": "/i", "tcp_close": True}),
    (
        ["--image-path", "/i", "--lazy-pages", "--page-server", "src:27000"],
        {"image_path": "/i", "lazy_pages": True, "page_server": "src:27000"},
    ),
]


@pytest.mark.parametrize(("argv", "fields"), RESTORE_TABLE)
def test_restore_flags_to_options(argv: list[str], fields: dict[str, Any]) -> None:
    assert restore_options(restore(*argv)) == checkpoint_pb2.RestoreOptions(**fields)


def test_restore_options_message() -> None:
    desc = checkpoint_pb2.RestoreOptions.DESCRIPTOR
    assert desc.full_name == "pyrunc.v1.RestoreOptions"
    assert {f.name: f.number for f in desc.fields} == {
        "image_path": 1, "work_path": 2, "tcp_close": 3, "lazy_pages": 4, "page_server": 5,
        "runtime_options": 6, "tls_cacert": 7, "tls_cert": 8, "tls_key": 9,
        "tls_no_cn_verify": 10,
    }


def test_any_type_urls_are_bare_names() -> None:
    ck = checkpoint_any(checkpoint("--exit", "--pre-dump"))
    assert ck.type_url == "pyrunc.v1.CheckpointOptions"
    assert checkpoint_pb2.CheckpointOptions.FromString(ck.value).pre_dump
    rs = restore_any(restore("--image-path", "/i", "--tcp-close"))
    assert rs.type_url == "pyrunc.v1.RestoreOptions"
    assert checkpoint_pb2.RestoreOptions.FromString(rs.value) == checkpoint_pb2.RestoreOptions(
        image_path="/i", tcp_close=True)


def test_restore_carries_the_container_runtime_options() -> None:
    from shim.api.containerd.runc.options import oci_pb2
    from shim.typeurl import pack

    runtime = pack(oci_pb2.Options(binary_name="crun", criu_path="/opt/criu"))
    rs = restore_any(restore("--image-path", "/i"), runtime)
    sent = checkpoint_pb2.RestoreOptions.FromString(rs.value)
    assert sent.runtime_options == runtime


# --- paths, stdio, globals ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("img", "/work/dir/img"),
        ("./img/", "/work/dir/img"),
        ("../img", "/work/img"),
        ("a/../b", "/work/dir/b"),
        ("/abs/img", "/abs/img"),
        ("/abs/./img/", "/abs/img"),
    ],
)
def test_relative_paths_are_made_absolute(given: str, sent: str) -> None:
    cmd = checkpoint("--image-path", given, "--work-path", given, "--parent-path", given)
    assert (cmd.image_path, cmd.work_path, cmd.parent_path) == (sent, sent, sent)
    opts = checkpoint_options(cmd)
    assert (opts.image_path, opts.work_path, opts.parent_path) == (sent, sent, sent)
    rs = restore("--image-path", given, "--work-path", given)
    assert (rs.image_path, rs.work_path) == (sent, sent)


def test_paths_default_to_the_process_cwd(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: pathlib.Path) -> None:
    monkeypatch.chdir(tmp_path)
    cmd = parse_args(["checkpoint", "c1", "--image-path", "img"], environ=ENV)
    assert isinstance(cmd, CheckpointCommand)
    assert cmd.image_path == str(tmp_path / "img")


@pytest.mark.parametrize(
    ("argv", "stdout", "stderr"),
    [
        ([], "", ""),
        (["--log-uri", "file:///var/log/c1.log"], "file:///var/log/c1.log",
         "file:///var/log/c1.log"),
        (["--log-uri", "binary:///usr/bin/logger?tag=x"], "binary:///usr/bin/logger?tag=x",
         "binary:///usr/bin/logger?tag=x"),
        (["--stdout", "out.log"], "file:///work/dir/out.log", ""),
        (["--stderr", "/l/err.log"], "", "file:///l/err.log"),
        (["--stdout", "o", "--stderr", "e"], "file:///work/dir/o", "file:///work/dir/e"),
        (["--stdout", "with space"], "file:///work/dir/with%20space", ""),
    ],
)
def test_restore_stdio(argv: list[str], stdout: str, stderr: str) -> None:
    cmd = restore("--image-path", "/i", *argv)
    assert (cmd.stdout, cmd.stderr) == (stdout, stderr)


def test_restore_defaults() -> None:
    assert restore("--image-path", "/i") == RestoreCommand(
        globals=Globals(), container_id="c1", image_path="/i")
    assert restore("--image-path", "/i", "-d").detach


def test_restore_tty() -> None:
    cmd = restore("--image-path", "/i", "-d", "--tty")
    assert (cmd.tty, cmd.fifo_dir, cmd.stdout, cmd.stderr) == (
        True, "/run/containerd/fifo", "", "")
    assert restore("--image-path", "/i", "-dt", "--fifo-dir", "f").fifo_dir == "/work/dir/f"


def test_globals_defaults_env_and_flags() -> None:
    def glob(argv: list[str], env: dict[str, str]) -> Globals:
        return parse_args(argv, environ=env, cwd=CWD).globals

    assert glob(["tasks"], {}) == Globals("/run/containerd/containerd.sock", "default")
    env = {"CONTAINERD_ADDRESS": "/run/it/c.sock", "CONTAINERD_NAMESPACE": "it"}
    assert glob(["tasks"], env) == Globals("/run/it/c.sock", "it")
    assert glob(["-a", "/x.sock", "-n", "ns1", "tasks"], env) == Globals("/x.sock", "ns1")
    # after the command too, and the later one wins
    assert glob(["-n", "ns1", "tasks", "--namespace", "ns2"], env).namespace == "ns2"
    assert glob(["checkpoint", "-a", "rel.sock", "c1"], env).address == "/work/dir/rel.sock"
    assert glob(["--address", "unix:///run/u.sock", "tasks"], {}).address == "unix:///run/u.sock"
    assert parse_args(["tasks", "-q"], environ={}, cwd=CWD) == TasksCommand(Globals(), quiet=True)


# --- refusals ----------------------------------------------------------------------------

BAD: list[tuple[list[str], str]] = [
    ([], "COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["checkpoint"], "ID"),
    (["checkpoint", ""], "must not be empty"),
    (["checkpoint", "c1", "--empty-ns", "net"], "invalid choice"),
    (["checkpoint", "c1", "--manage-cgroups-mode", "hard"], "invalid choice"),
    (["checkpoint", "c1", "--network-lock", "ebpf"], "invalid choice"),
    (["checkpoint", "c1", "--page-server", "27000"], "HOST:PORT"),
    (["checkpoint", "c1", "--page-server", "host:"], "1..65535"),
    (["checkpoint", "c1", "--page-server", "host:0"], "1..65535"),
    (["checkpoint", "c1", "--page-server", "host:65536"], "1..65535"),
    (["checkpoint", "c1", "--page-server", "fd00::1:80"], "HOST:PORT"),
    (["checkpoint", "c1", "--page-server", "a b:80"], "HOST:PORT"),
    (["checkpoint", "c1", "--ghost-limit", "-1"], "size"),
    (["checkpoint", "c1", "--ghost-limit", "lots"], "size"),
    (["checkpoint", "c1", "--ghost-limit", str(1 << 64)], "too large"),
    (["checkpoint", "c1", "--image-path", ""], "must not be empty"),
    (["checkpoint", "c1", "--leave-running"], "unrecognized"),
    (["checkpoint", "c1", "c2"], "unrecognized"),
    (["restore", "c1"], "--image-path"),
    (["restore", "c1", "--image-path", "/i", "--lazy-pages"], "go together"),
    (["restore", "c1", "--image-path", "/i", "--page-server", "h:1"], "go together"),
    (["restore", "c1", "--image-path", "/i", "--log-uri", "/var/log/x"], "not a URI"),
    (["restore", "c1", "--image-path", "/i", "--log-uri", "file://rel/x"], "absolute"),
    (["restore", "c1", "--image-path", "/i", "--log-uri", "file:///x", "--stdout", "o"],
     "not allowed"),
    (["restore", "c1", "--image-path", "/i", "--log-uri", "file:///x", "--stderr", "e"],
     "not allowed"),
    (["restore", "c1", "--image-path", "/i", "--exit"], "unrecognized"),
    (["restore", "c1", "--image-path", "/i", "--tty"], "needs --detach"),
    (["restore", "c1", "--image-path", "/i", "-dt", "--log-uri", "file:///x"], "terminal"),
    (["restore", "c1", "--image-path", "/i", "-dt", "--stdout", "o"], "terminal"),
    (["restore", "c1", "--image-path", "/i", "-d", "--fifo-dir", "/f"], "goes with --tty"),
    (["-n", "", "tasks"], "must not be empty"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_bad_input_refused_by_argparse(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, environ=ENV, cwd=CWD)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pyrunc"), err
    assert message in err, err


@pytest.mark.parametrize(
    ("value", "size"),
    [("0", 0), ("1", 1), ("1048576", 1 << 20), ("1k", 1024), ("1K", 1024), ("3KiB", 3072),
     ("1M", 1 << 20), ("1MB", 1 << 20), ("2G", 2 << 30), ("1T", 1 << 40), ("7B", 7)],
)
def test_parse_size(value: str, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["h:1", "h.example.org:65535", "127.0.0.1:27000",
                                   "[::1]:8080", "[fd00::a:2]:1"])
def test_parse_host_port_accepts(value: str) -> None:
    assert parse_host_port(value) == value


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("checkpoint", "restore", "tasks", "--address", "--namespace",
                 "CONTAINERD_ADDRESS", "made absolute"):
        assert word in out


def test_checkpoint_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["checkpoint", "--help"])
    out = capsys.readouterr().out
    for flag in ("--image-path", "--work-path", "--exit", "--tcp-established", "--ext-unix-sk",
                 "--shell-job", "--file-locks", "--empty-ns", "--manage-cgroups-mode",
                 "--auto-dedup", "--pre-dump", "--parent-path", "--lazy-pages", "--page-server",
                 "--tcp-close", "--tcp-skip-in-flight", "--link-remap", "--ghost-limit",
                 "--network-lock", "--quiet"):
        assert flag in out


# --- commands against a fake API ---------------------------------------------------------

@dataclass
class FakeAPI:
    """Records calls; ``fail`` maps a method name to the CtlError it raises."""

    container: ContainerInfo = field(
        default_factory=lambda: ContainerInfo("c1", "io.containerd.pyrunc.v2", "overlayfs", "c1"))
    exit_status: int = 0
    fail: dict[str, CtlError] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    terminal_io: tuple[str, bool] | None = None  # (stdin, terminal) of the last create_task

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.fail:
            raise self.fail[name]

    def list_tasks(self) -> list[TaskInfo]:
        self._record("list_tasks")
        return [TaskInfo("b", 20, TaskStatus.PAUSED), TaskInfo("a", 10, TaskStatus.RUNNING)]

    def checkpoint(self, container_id: str, options: Any) -> list[Descriptor]:
        self._record("checkpoint", container_id, options)
        return [Descriptor("application/vnd.containerd.container.criu.checkpoint.criu.tar",
                           "sha256:" + "a" * 64, 4096)]

    def get_container(self, container_id: str) -> ContainerInfo:
        self._record("get_container", container_id)
        return self.container

    def mounts(self, snapshotter: str, key: str) -> list[Any]:
        self._record("mounts", snapshotter, key)
        return [mount_pb2.Mount(type="overlay", source="overlay", options=["lowerdir=/l"])]

    def create_task(self, container_id: str, *, rootfs: Sequence[Any], stdout: str,
                    stderr: str, options: Any, stdin: str = "", terminal: bool = False) -> int:
        self._record("create_task", container_id, tuple(rootfs), stdout, stderr, options)
        self.terminal_io = (stdin, terminal)
        return 0

    def start(self, container_id: str) -> int:
        self._record("start", container_id)
        return 4242

    def wait(self, container_id: str) -> int:
        self._record("wait", container_id)
        return self.exit_status

    def delete_task(self, container_id: str) -> int:
        self._record("delete_task", container_id)
        return self.exit_status


def names(api: FakeAPI) -> list[str]:
    return [name for name, _ in api.calls]


def test_restore_detached_calls_in_order() -> None:
    api, out = FakeAPI(), io.StringIO()
    cmd = restore("--image-path", "img", "--stdout", "o.log", "--detach")
    assert run_restore(cmd, api, out) == 0
    assert names(api) == ["get_container", "mounts", "create_task", "start"]
    assert api.calls[1][1] == ("overlayfs", "c1")
    _, (cid, rootfs, stdout, stderr, options) = api.calls[2]
    assert cid == "c1"
    assert [m.type for m in rootfs] == ["overlay"]
    assert (stdout, stderr) == ("file:///work/dir/o.log", "")
    assert options.type_url == "pyrunc.v1.RestoreOptions"
    assert checkpoint_pb2.RestoreOptions.FromString(options.value).image_path == "/work/dir/img"
    assert out.getvalue() == "4242\n"


def test_restore_without_snapshot_sends_no_rootfs() -> None:
    api = FakeAPI(container=ContainerInfo("c1", "io.containerd.pyrunc.v2", "", ""))
    assert run_restore(restore("--image-path", "/i", "-d"), api, io.StringIO()) == 0
    assert names(api) == ["get_container", "create_task", "start"]
    assert api.calls[1][1][1] == ()


@pytest.mark.parametrize(("status", "code"), [(0, 0), (3, 3), (137, 137), (300, 255)])
def test_restore_waits_deletes_and_returns_status(status: int, code: int) -> None:
    api = FakeAPI(exit_status=status)
    assert run_restore(restore("--image-path", "/i"), api, io.StringIO()) == code
    assert names(api) == ["get_container", "mounts", "create_task", "start", "wait",
                          "delete_task"]


def test_restore_start_failure_deletes_the_task() -> None:
    err = CtlError("FAILED_PRECONDITION", "criu failed: see /b/restore.log")
    api = FakeAPI(fail={"start": err})
    with pytest.raises(CtlError) as info:
        run_restore(restore("--image-path", "/i"), api, io.StringIO())
    assert info.value is err
    assert names(api)[-2:] == ["start", "delete_task"]


def test_restore_start_failure_reported_even_if_delete_fails() -> None:
    err = CtlError("FAILED_PRECONDITION", "no images")
    api = FakeAPI(fail={"start": err, "delete_task": CtlError("NOT_FOUND", "gone")})
    with pytest.raises(CtlError) as info:
        run_restore(restore("--image-path", "/i"), api, io.StringIO())
    assert info.value is err


@pytest.mark.parametrize("failing", ["get_container", "mounts", "create_task"])
def test_restore_stops_at_first_failure(failing: str) -> None:
    api = FakeAPI(fail={failing: CtlError("NOT_FOUND", "x")})
    with pytest.raises(CtlError):
        run_restore(restore("--image-path", "/i"), api, io.StringIO())
    assert names(api)[-1] == failing
    assert "start" not in names(api)


def test_restore_without_tty_sends_no_stdin_and_no_terminal() -> None:
    api = FakeAPI()
    run_restore(restore("--image-path", "/i", "-d"), api, io.StringIO())
    assert api.terminal_io == ("", False)


def test_restore_tty_makes_fifos_and_asks_for_a_terminal(tmp_path: pathlib.Path) -> None:
    api, out, err = FakeAPI(), io.StringIO(), io.StringIO()
    cmd = restore("--image-path", "/i", "-d", "-t", "--fifo-dir", str(tmp_path / "f"))
    assert run_restore(cmd, api, out, err) == 0
    _, (_, _, stdout, stderr, _) = api.calls[2]
    assert api.terminal_io is not None
    stdin, terminal = api.terminal_io
    assert terminal and stderr == ""
    [directory] = (tmp_path / "f").iterdir()
    assert directory.name.startswith("c1-") and stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (stdin, stdout) == (str(directory / "c1-stdin"), str(directory / "c1-stdout"))
    assert all(stat.S_ISFIFO(os.stat(p).st_mode) for p in (stdin, stdout))
    assert out.getvalue() == "4242\n"
    assert "t attach c1" in err.getvalue() and str(directory) in err.getvalue()


@pytest.mark.parametrize("failing", ["create_task", "start"])
def test_restore_tty_fifos_removed_when_the_task_does_not_start(tmp_path: pathlib.Path,
                                                               failing: str) -> None:
    api = FakeAPI(fail={failing: CtlError("FAILED_PRECONDITION", "no")})
    cmd = restore("--image-path", "/i", "-d", "-t", "--fifo-dir", str(tmp_path))
    with pytest.raises(CtlError):
        run_restore(cmd, api, io.StringIO(), io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_restore_tty_fifo_dir_that_cannot_be_made(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    cmd = restore("--image-path", "/i", "-d", "-t", "--fifo-dir", str(tmp_path / "file"))
    with pytest.raises(CtlError, match="cannot make FIFOs under"):
        run_restore(cmd, FakeAPI(), io.StringIO(), io.StringIO())


def test_checkpoint_prints_descriptors_unless_quiet() -> None:
    api, out = FakeAPI(), io.StringIO()
    assert run_checkpoint(checkpoint("--exit"), api, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["MEDIA", "TYPE", "DIGEST", "SIZE"]
    assert lines[1].split() == ["application/vnd.containerd.container.criu.checkpoint.criu.tar",
                                "sha256:" + "a" * 64, "4096"]
    out = io.StringIO()
    assert run_checkpoint(checkpoint("-q"), api, out) == 0
    assert out.getvalue() == ""


def test_checkpoint_done_although_containerd_already_holds_the_blob() -> None:
    # containerd 1.6 fails Tasks/Checkpoint after the shim's dump when its content store
    # already has an identical blob (the empty archive of --image-path checkpoints)
    # (unconverted, so its gRPC code is UNKNOWN)
    details = "content sha256:" + "5f70bf18" * 8 + ": already exists"
    for code in ("UNKNOWN", "ALREADY_EXISTS"):
        api, out, err = FakeAPI(fail={"checkpoint": CtlError(code, details)}), \
            io.StringIO(), io.StringIO()
        assert run_checkpoint(checkpoint("--image-path", "/i"), api, out, err) == 0
        assert out.getvalue() == ""
        assert err.getvalue() == (f"pyrunc: note: c1 was checkpointed; containerd stored no "
                                  f"new blob ({details})\n")


@pytest.mark.parametrize(("code", "details"), [
    ("ALREADY_EXISTS", "/i already holds a checkpoint"),  # the shim refused: nothing done
    ("ALREADY_EXISTS", "content sha256:abc: already exists"),
    ("INTERNAL", "content sha256:" + "a" * 64 + ": already exists"),
    ("UNKNOWN", "runc checkpoint failed: content sha256:" + "a" * 64 + ": already exists"),
])
def test_checkpoint_other_errors_propagate(code: str, details: str) -> None:
    error = CtlError(code, details)
    with pytest.raises(CtlError) as info:
        run_checkpoint(checkpoint("--image-path", "/i"), FakeAPI(fail={"checkpoint": error}),
                       io.StringIO(), io.StringIO())
    assert info.value is error


def test_tasks_table_and_quiet() -> None:
    out = io.StringIO()
    assert run_tasks(TasksCommand(Globals()), FakeAPI(), out) == 0
    assert [line.split() for line in out.getvalue().splitlines()] == [
        ["TASK", "PID", "STATUS"], ["a", "10", "RUNNING"], ["b", "20", "PAUSED"]]
    out = io.StringIO()
    run_tasks(TasksCommand(Globals(), quiet=True), FakeAPI(), out)
    assert out.getvalue() == "a\nb\n"


def test_exit_code() -> None:
    assert [exit_code(s) for s in (0, 1, 255, 256, 4294967295)] == [0, 1, 255, 255, 255]


def test_error_messages_are_one_line() -> None:
    assert one_line("a\n\n  b  \n") == "a; b"
    assert str(CtlError("NOT_FOUND", "container \"x\": not found")) == 'container "x": not found'
    assert str(CtlError("UNAVAILABLE", "refused", "cannot reach containerd at /s")) == (
        "cannot reach containerd at /s: refused")
    assert str(CtlError("INTERNAL", "")) == "internal"


# --- end to end against an in-process gRPC server ----------------------------------------

grpc = pytest.importorskip("grpc")


@dataclass
class Server:
    """A fake containerd: records (method, request, namespace); ``abort`` makes a call fail."""

    address: str
    calls: list[tuple[str, Any, str]] = field(default_factory=list)
    abort: dict[str, tuple[Any, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


def _servicers(state: Server) -> tuple[Any, Any, Any]:
    from shim.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
    from shim.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
    from shim.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
    from shim.api.containerd.types.task import task_pb2

    def record(name: str, request: Any, context: Any) -> None:
        md = dict(context.invocation_metadata())
        with state.lock:
            state.calls.append((name, request, md.get("containerd-namespace", "")))
        if name in state.abort:
            code, details = state.abort[name]
            context.abort(code, details)

    class Tasks(tasks_pb2_grpc.TasksServicer):  # type: ignore[misc]
        def List(self, request: Any, context: Any) -> Any:
            record("Tasks/List", request, context)
            return tasks_pb2.ListTasksResponse(tasks=[
                task_pb2.Process(container_id="web", id="web", pid=31, status=task_pb2.RUNNING),
                task_pb2.Process(container_id="db", id="db", pid=7, status=task_pb2.STOPPED),
            ])

        def Checkpoint(self, request: Any, context: Any) -> Any:
            record("Tasks/Checkpoint", request, context)
            return tasks_pb2.CheckpointTaskResponse(descriptors=[
                descriptor_pb2.Descriptor(
                    media_type="application/vnd.containerd.container.criu.checkpoint.criu.tar",
                    digest="sha256:" + "1" * 64, size=10240),
                descriptor_pb2.Descriptor(
                    media_type="application/vnd.containerd.container.checkpoint.config.v1+proto",
                    digest="sha256:" + "2" * 64, size=321),
            ])

        def Create(self, request: Any, context: Any) -> Any:
            record("Tasks/Create", request, context)
            return tasks_pb2.CreateTaskResponse(container_id=request.container_id, pid=0)

        def Start(self, request: Any, context: Any) -> Any:
            record("Tasks/Start", request, context)
            return tasks_pb2.StartResponse(pid=555)

        def Wait(self, request: Any, context: Any) -> Any:
            record("Tasks/Wait", request, context)
            return tasks_pb2.WaitResponse(exit_status=3)

        def Delete(self, request: Any, context: Any) -> Any:
            record("Tasks/Delete", request, context)
            return tasks_pb2.DeleteResponse(id=request.container_id, exit_status=3)

    class Containers(containers_pb2_grpc.ContainersServicer):  # type: ignore[misc]
        def Get(self, request: Any, context: Any) -> Any:
            record("Containers/Get", request, context)
            return containers_pb2.GetContainerResponse(container=containers_pb2.Container(
                id=request.id, snapshotter="overlayfs", snapshot_key=request.id,
                runtime=containers_pb2.Container.Runtime(name="io.containerd.pyrunc.v2")))

    class Snapshots(snapshots_pb2_grpc.SnapshotsServicer):  # type: ignore[misc]
        def Mounts(self, request: Any, context: Any) -> Any:
            record("Snapshots/Mounts", request, context)
            return snapshots_pb2.MountsResponse(mounts=[mount_pb2.Mount(
                type="overlay", source="overlay",
                options=["workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs"])])

    return Tasks(), Containers(), Snapshots()


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Server]:
    from shim.api.containerd.services.containers.v1 import containers_pb2_grpc
    from shim.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
    from shim.api.containerd.services.tasks.v1 import tasks_pb2_grpc

    state = Server(address=str(tmp_path / "c.sock"))
    tasks, containers, snapshots = _servicers(state)
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    tasks_pb2_grpc.add_TasksServicer_to_server(tasks, srv)
    containers_pb2_grpc.add_ContainersServicer_to_server(containers, srv)
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(snapshots, srv)
    srv.add_insecure_port(f"unix:{state.address}")
    srv.start()
    try:
        yield state
    finally:
        srv.stop(0).wait()


def test_e2e_tasks(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-a", server.address, "-n", "it", "tasks"]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["TASK", "PID", "STATUS"], ["db", "7", "STOPPED"], ["web", "31", "RUNNING"]]
    assert server.calls[0][0] == "Tasks/List"
    assert server.calls[0][2] == "it"


def test_e2e_namespace_from_environment(server: Server, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONTAINERD_ADDRESS", server.address)
    monkeypatch.setenv("CONTAINERD_NAMESPACE", "from-env")
    assert main(["tasks", "-q"]) == 0
    assert capsys.readouterr().out == "db\nweb\n"
    assert server.calls[0][2] == "from-env"


def test_e2e_checkpoint(server: Server, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["-a", server.address, "-n", "ns", "checkpoint", "web", "--image-path", "img",
            "--pre-dump", "--tcp-established", "--empty-ns", "network", "--ghost-limit", "1M"]
    assert main(argv) == 0
    ((name, req, ns),) = server.calls
    assert (name, ns, req.container_id) == ("Tasks/Checkpoint", "ns", "web")
    assert req.options.type_url == "pyrunc.v1.CheckpointOptions"
    assert checkpoint_pb2.CheckpointOptions.FromString(req.options.value) == (
        checkpoint_pb2.CheckpointOptions(image_path=str(tmp_path / "img"), pre_dump=True,
                                         open_tcp=True, empty_namespaces=["network"],
                                         ghost_limit=1 << 20))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[1].split() == ["application/vnd.containerd.container.criu.checkpoint.criu.tar",
                              "sha256:" + "1" * 64, "10240"]


def test_e2e_restore(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-a", server.address, "restore", "web", "--image-path", "/ckpt/web",
            "--log-uri", "file:///var/log/web.log", "--tcp-close"]
    assert main(argv) == 3  # the task's exit status
    assert server.names() == ["Containers/Get", "Snapshots/Mounts", "Tasks/Create",
                              "Tasks/Start", "Tasks/Wait", "Tasks/Delete"]
    assert {ns for _, _, ns in server.calls} == {"default"}
    get, mounts, create = (req for _, req, _ in server.calls[:3])
    assert get.id == "web"
    assert (mounts.snapshotter, mounts.key) == ("overlayfs", "web")
    assert create.container_id == "web"
    assert [m.options[-1] for m in create.rootfs] == ["lowerdir=/s/1/fs"]
    assert (create.stdin, create.stdout, create.stderr, create.terminal) == (
        "", "file:///var/log/web.log", "file:///var/log/web.log", False)
    assert not create.HasField("checkpoint")
    assert create.options.type_url == "pyrunc.v1.RestoreOptions"
    assert checkpoint_pb2.RestoreOptions.FromString(create.options.value) == (
        checkpoint_pb2.RestoreOptions(image_path="/ckpt/web", tcp_close=True))
    assert capsys.readouterr().out == "555\n"


def test_e2e_restore_detach(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-a", server.address, "restore", "web", "--image-path", "/i", "-d"]) == 0
    assert server.names()[-1] == "Tasks/Start"
    assert capsys.readouterr().out == "555\n"


@pytest.mark.parametrize(
    ("method", "code", "details"),
    [
        ("Tasks/Checkpoint", "FAILED_PRECONDITION",
         "cannot checkpoint a stopped container: failed precondition"),
        ("Tasks/Checkpoint", "INVALID_ARGUMENT",
         "pre_dump and exit cannot be combined: invalid argument"),
        ("Tasks/Checkpoint", "UNKNOWN", "type with url pyrunc.v1.CheckpointOptions: not found"),
    ],
)
def test_e2e_status_passed_through_verbatim(
    server: Server, capsys: pytest.CaptureFixture[str], method: str, code: str, details: str
) -> None:
    server.abort[method] = (getattr(grpc.StatusCode, code), details)
    assert main(["-a", server.address, "checkpoint", "web"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"pyrunc: {details}\n"


def test_e2e_restore_not_found(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    details = 'container "nope" in namespace "default": not found'
    server.abort["Containers/Get"] = (grpc.StatusCode.NOT_FOUND, details)
    assert main(["-a", server.address, "restore", "nope", "--image-path", "/i"]) == 1
    assert capsys.readouterr().err == f"pyrunc: {details}\n"
    assert server.names() == ["Containers/Get"]


def test_e2e_restore_start_failure_deletes_task(server: Server,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    server.abort["Tasks/Start"] = (grpc.StatusCode.FAILED_PRECONDITION, "criu restore failed\n"
                                   "see /run/b/restore.log")
    assert main(["-a", server.address, "restore", "web", "--image-path", "/i"]) == 1
    assert capsys.readouterr().err == "pyrunc: criu restore failed; see /run/b/restore.log\n"
    assert server.names()[-2:] == ["Tasks/Start", "Tasks/Delete"]


def test_e2e_unreachable(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none.sock"
    assert main(["-a", str(sock), "tasks"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyrunc: cannot reach containerd at {sock}: ")
    assert err.count("\n") == 1


# --- generated stubs, packaging, and the daemon staying grpc-free -------------------------

def test_grpc_stubs_only_for_containerd_grpc_services() -> None:
    api = ROOT / "shim" / "api"
    found = sorted(str(p.relative_to(api)) for p in api.rglob("*_pb2_grpc.py"))
    assert found == [
        "containerd/services/containers/v1/containers_pb2_grpc.py",
        "containerd/services/content/v1/content_pb2_grpc.py",
        "containerd/services/diff/v1/diff_pb2_grpc.py",
        "containerd/services/images/v1/images_pb2_grpc.py",
        "containerd/services/leases/v1/leases_pb2_grpc.py",
        "containerd/services/snapshots/v1/snapshots_pb2_grpc.py",
        "containerd/services/tasks/v1/tasks_pb2_grpc.py",
        "k8s/cri/runtime/v1/api_pb2_grpc.py",
        "pyrunc/migrate/v1/agent_pb2_grpc.py",
    ]
    for name in found:
        text = (api / name).read_text()
        assert "\nfrom containerd." not in text and "\nimport containerd" not in text
        assert "\nfrom k8s." not in text and "\nimport k8s" not in text
        assert "\nfrom shim.api." in text


def test_grpc_method_paths() -> None:
    from shim.api.containerd.services.containers.v1 import containers_pb2
    from shim.api.containerd.services.snapshots.v1 import snapshots_pb2
    from shim.api.containerd.services.tasks.v1 import tasks_pb2

    def methods(module: Any, service: str) -> set[str]:
        desc = module.DESCRIPTOR.services_by_name[service]
        return {f"/{desc.full_name}/{m.name}" for m in desc.methods}

    assert {"/containerd.services.tasks.v1.Tasks/Checkpoint",
            "/containerd.services.tasks.v1.Tasks/Create",
            "/containerd.services.tasks.v1.Tasks/Start",
            "/containerd.services.tasks.v1.Tasks/Wait",
            "/containerd.services.tasks.v1.Tasks/Delete",
            "/containerd.services.tasks.v1.Tasks/List"} <= methods(tasks_pb2, "Tasks")
    assert len(methods(tasks_pb2, "Tasks")) == 17
    assert "/containerd.services.containers.v1.Containers/Get" in methods(
        containers_pb2, "Containers")
    assert "/containerd.services.snapshots.v1.Snapshots/Mounts" in methods(
        snapshots_pb2, "Snapshots")
    fields = {f.name: f.number for f in tasks_pb2.CreateTaskRequest.DESCRIPTOR.fields}
    assert fields == {"container_id": 1, "rootfs": 3, "stdin": 4, "stdout": 5, "stderr": 6,
                      "terminal": 7, "checkpoint": 8, "options": 9, "runtime_path": 10}
    assert tasks_pb2.CheckpointTaskRequest.DESCRIPTOR.fields_by_name["options"].number == 3
    resp = tasks_pb2.CheckpointTaskResponse.DESCRIPTOR.fields_by_name["descriptors"]
    assert resp.message_type.full_name == "containerd.types.Descriptor"
    assert {f.name: f.number for f in descriptor_pb2.Descriptor.DESCRIPTOR.fields} == {
        "media_type": 1, "digest": 2, "size": 3, "annotations": 5}


def test_console_script_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '\npyrunc = "shim.ctl:main"\n' in text


def test_daemon_never_imports_grpc() -> None:
    code = (
        "import sys\n"
        "import shim.cli, shim.daemon, shim.service, shim.container, shim.typeurl\n"
        "import shim.ctl._args, shim.ctl._options\n"
        "bad = sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_help_and_usage_errors_work_without_grpc(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "grpc"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked', name='grpc')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    run = [sys.executable, "-m", "shim.ctl"]
    proc = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0 and "checkpoint" in proc.stdout, proc.stderr
    proc = subprocess.run([*run, "tasks"], capture_output=True, text=True, env=env,
                          check=False)
    assert (proc.returncode, proc.stderr) == (
        1, "pyrunc: needs grpcio (install containerd-shim-pyrunc[grpc])\n")
