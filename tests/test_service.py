"""shim.service.TaskService (and shim.container under it) driven through its ttrpc handlers.

Requests go in as bytes and replies come out as bytes, as containerd sends them. The runtime
is a fake ``runc`` (a shell script): ``create`` starts the container's init as a shell
process waiting on an exec FIFO (``start`` opens it), writes the pid file and exits, so the
init is re-parented to this process (a child subreaper for the test, as the shim daemon is)
and reaped by the real Reaper. Like runc, the fake never collects a container process's
exit itself. Events are captured by a fake publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from shim.api.containerd.runc.options import oci_pb2
from shim.api.containerd.task.v2 import shim_pb2 as api
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.bundle import RESTORE_ANNOTATION
from shim.checkpoint.plan import UNPACKING, RestoreSource
from shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ShimError,
    to_status,
)
from shim.reaper import Reaper
from shim.service import TaskService, _restore_source
from shim.state import TaskStatus
from shim.ttrpc import Code, RequestContext
from shim.typeurl import OCI_PROCESS, OCI_RESOURCES, pack

T = TypeVar("T")
M = TypeVar("M", bound=Message)

# -- _restore_source ----------------------------------------------------------------------------


def create_request(checkpoint: str = "", options: Message | None = None) -> api.CreateTaskRequest:
    req = api.CreateTaskRequest(id="c1", bundle="/b", checkpoint=checkpoint)
    if options is not None:
        req.options.CopyFrom(pack(options))
    return req


R = checkpoint_pb2.RestoreOptions


@pytest.mark.parametrize(
    ("req", "source"),
    [
        (create_request(), None),
        (create_request(options=oci_pb2.Options(binary_name="runc")), None),
        (create_request("/var/lib/ck"), RestoreSource("/var/lib/ck")),
        (
            create_request("/var/lib/ck", oci_pb2.Options(criu_path="/c")),
            RestoreSource("/var/lib/ck"),
        ),
        (
            create_request(
                options=R(
                    image_path="/img",
                    work_path="/work",
                    tcp_close=True,
                    lazy_pages=True,
                    page_server="10.0.0.1:27",
                )
            ),
            RestoreSource("/img", "/work", True, True, "10.0.0.1:27"),
        ),
        (create_request("/ck", R(tcp_close=True)), RestoreSource("/ck", tcp_close=True)),
    ],
)
def test_restore_source(req: api.CreateTaskRequest, source: RestoreSource | None) -> None:
    assert _restore_source(req) == source


def test_restore_options_with_a_prefixed_type_url() -> None:
    req = create_request()
    req.options.CopyFrom(
        AnyPb(
            type_url="type.googleapis.com/pyrunc.v1.RestoreOptions",
            value=R(image_path="/img").SerializeToString(),
        )
    )
    assert _restore_source(req) == RestoreSource("/img")


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (create_request("/ck", R(image_path="/img")), "both a checkpoint and"),
        (create_request(options=R(work_path="/w")), "without image_path"),
        (create_request(options=R(image_path="img")), "image_path must be absolute"),
        (create_request("ck", R()), "image_path must be absolute"),
        (
            create_request(options=R(image_path="/img", work_path="w")),
            "work_path must be absolute",
        ),
    ],
)
def test_restore_source_refused(req: api.CreateTaskRequest, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        _restore_source(req)


def test_restore_options_that_do_not_decode() -> None:
    req = create_request()
    req.options.CopyFrom(AnyPb(type_url="pyrunc.v1.RestoreOptions", value=b"\x0a\x05ab"))
    with pytest.raises(InvalidArgument, match="cannot decode"):
        _restore_source(req)


# -- handlers without a runtime -------------------------------------------------------------------


@dataclass
class FakePublisher:
    events: list[tuple[str, Message]] = field(default_factory=list)

    def publish(self, topic: str, event: Message) -> None:
        self.events.append((topic, event))

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]

    def of(self, topic: str) -> list[Any]:
        return [e for t, e in self.events if t == topic]


def ctx(method: str) -> RequestContext:
    return RequestContext("containerd.task.v2.Task", method, {}, None)


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


def make_service() -> tuple[TaskService, FakePublisher]:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    publisher = FakePublisher()
    return TaskService("testns", reaper, publisher), publisher  # type: ignore[arg-type]


async def call(svc: TaskService, method: str, req: Message, reply: type[M]) -> M:
    data = await svc.handlers()[method](ctx(method), req.SerializeToString())
    out = reply()
    out.ParseFromString(data)
    return out


METHODS = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
]


def test_every_task_method_has_a_handler() -> None:
    async def main() -> None:
        svc, _ = make_service()
        assert sorted(svc.handlers()) == sorted(METHODS)

    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_undecodable_request_is_invalid_argument(method: str) -> None:
    async def main() -> None:
        svc, _ = make_service()
        with pytest.raises(InvalidArgument, match=r"cannot decode containerd\.task\.v2"):
            await svc.handlers()[method](ctx(method), b"\x0a\x05ab")  # field 1, cut short

    run(main())


UNKNOWN_CONTAINER: list[tuple[str, Message]] = [
    ("State", api.StateRequest(id="nope")),
    ("Start", api.StartRequest(id="nope")),
    ("Delete", api.DeleteRequest(id="nope")),
    ("Pids", api.PidsRequest(id="nope")),
    ("Pause", api.PauseRequest(id="nope")),
    ("Resume", api.ResumeRequest(id="nope")),
    ("Checkpoint", api.CheckpointTaskRequest(id="nope", path="/ck")),
    ("Kill", api.KillRequest(id="nope", signal=9)),
    ("Exec", api.ExecProcessRequest(id="nope", exec_id="e1")),
    ("ResizePty", api.ResizePtyRequest(id="nope", width=80, height=24)),
    ("CloseIO", api.CloseIORequest(id="nope", stdin=True)),
    ("Update", api.UpdateTaskRequest(id="nope")),
    ("Wait", api.WaitRequest(id="nope")),
    ("Stats", api.StatsRequest(id="nope")),
]


@pytest.mark.parametrize(
    ("method", "req"), UNKNOWN_CONTAINER, ids=[m for m, _ in UNKNOWN_CONTAINER]
)
def test_unknown_container_is_not_found(method: str, req: Message) -> None:
    async def main() -> None:
        svc, publisher = make_service()
        with pytest.raises(NotFound, match="container nope not created"):
            await svc.handlers()[method](ctx(method), req.SerializeToString())
        assert publisher.events == []

    run(main())


def test_close_io_without_stdin_flag_asks_nothing() -> None:
    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "CloseIO", api.CloseIORequest(id="nope"), Empty)

    run(main())


def test_connect_and_shutdown_without_containers() -> None:
    async def main() -> None:
        svc, _ = make_service()
        reply = await call(svc, "Connect", api.ConnectRequest(id="c1"), api.ConnectResponse)
        assert (reply.shim_pid, reply.task_pid) == (os.getpid(), 0)
        assert not svc.shutdown_requested.is_set()
        await call(svc, "Shutdown", api.ShutdownRequest(id="c1"), Empty)
        assert svc.shutdown_requested.is_set()

    run(main())


# -- a fake runc ------------------------------------------------------------------------------

FAKE_RUNC = r"""#!/bin/sh
# A fake runc: records each call in <root>/calls; a "container" is a shell process.
root= log=
while :; do
    case $1 in
        --root) root=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        --log-format | --criu) shift 2 ;;
        --systemd-cgroup) shift ;;
        *) break ;;
    esac
done
cmd=$1
shift
mkdir -p "$root"
echo "$cmd $*" >> "$root/calls"
fail() {
    printf '{"level":"error","msg":"%s"}\n' "$1" >> "$log"
    echo "$1" >&2
    exit 1
}
opt() { # opt NAME ARGS...: the value after NAME
    name=$1
    shift
    while [ $# -gt 1 ]; do [ "$1" = "$name" ] && { echo "$2"; return; }; shift; done
}
eval "id=\${$#}"
all=
case $cmd in kill) [ "$1" = --all ] && { all=1; shift; }; id=$1 ;; esac
dir=$root/$id
pid() { cat "$dir/pid"; }
detach() { # start "$@" on our stdio; it runs only once re-parented away from this shell,
    # because a shell reaps its exited children whenever it likes: like runc, the fake
    # must never collect the exit of a container process.
    fake=$$
    exec 9<&0
    (
        while read -r _ _ _ ppid _ < /proc/self/stat && [ "$ppid" = "$fake" ]; do :; done
        exec "$@"
    ) 0<&9 9<&- &
}
case $cmd in
create)
    bundle=$(opt --bundle "$@")
    pidfile=$(opt --pid-file "$@")
    [ -e "$bundle/fail-create" ] && fail "$(cat "$bundle/fail-create")"
    [ -e "$dir" ] && fail "container with id exists: $id"
    mkdir -p "$dir"
    mkfifo "$dir/exec.fifo"
    detach sh -c 'read -r _ < "$1"; exec sh "$2"' init "$dir/exec.fifo" "$bundle/init.sh"
    echo $! > "$dir/pid"
    echo $! > "$pidfile"
    ;;
start)
    [ -e "$dir" ] || fail "container $id does not exist"
    : > "$dir/exec.fifo"
    ;;
exec)
    [ -e "$dir" ] || fail "container $id does not exist"
    pidfile=$(opt --pid-file "$@")
    # the process spec is JSON; its args are ["sh", "-c", SCRIPT] (see exec_spec())
    process=$(opt --process "$@")
    fails=$(dirname "$process")/fail-exec
    [ -e "$fails" ] && fail "$(cat "$fails")"
    cp "$process" "$dir/exec-process.json"
    @PYTHON@ -c 'import json, sys; sys.stdout.write(json.load(sys.stdin)["args"][-1])' \
        < "$process" > "$dir/exec.$$.sh"
    detach sh "$dir/exec.$$.sh"
    echo $! >> "$dir/exec-pids"
    echo $! > "$pidfile"
    ;;
kill)
    [ -e "$dir" ] || fail "container $id does not exist"
    if [ -n "$all" ]; then # every process of the "cgroup", dead init or not (as runc)
        for p in $(pid) $(cat "$dir/exec-pids" 2>/dev/null); do kill -"$2" "$p" 2>/dev/null; done
        exit 0
    fi
    kill -"$2" "$(pid)" 2>/dev/null || fail "container not running"
    ;;
delete)
    [ -e "$dir" ] || fail "container $id does not exist"
    [ "$1" = --force ] && kill -9 "$(pid)" 2>/dev/null
    rm -rf "$dir"
    ;;
pause) kill -STOP "$(pid)" ;;
resume) kill -CONT "$(pid)" ;;
update) cat > "$dir/resources" ;;
ps)
    pids=$(pid)
    for p in $(cat "$dir/exec-pids" 2>/dev/null); do pids="$pids,$p"; done
    echo "[$pids]"
    ;;
*) fail "unknown command $cmd" ;;
esac
"""

PR_SET_CHILD_SUBREAPER = 36

SPEC = {"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}
"""The test bundle's config.json: a container with a PID namespace of its own."""


def exec_spec(script: str, *, terminal: bool = False) -> AnyPb:
    """An Exec's process spec running ``script`` (the fake runc runs its last arg)."""
    process = {"args": ["sh", "-c", script], "cwd": "/", "terminal": terminal}
    return AnyPb(type_url=OCI_PROCESS, value=json.dumps(process).encode())


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this process a child subreaper (as the shim daemon is) for the test."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@dataclass
class Env:
    """A fake runc, a bundle and the state root, all in tmp_path."""

    tmp: Path
    runc: Path
    bundle: Path
    root: Path

    def options(self) -> AnyPb:
        return pack(oci_pb2.Options(binary_name=str(self.runc), root=str(self.root)))

    def calls(self) -> list[str]:
        path = self.root / "testns" / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def init(self, script: str) -> None:
        (self.bundle / "init.sh").write_text(script)

    def fifo(self, name: str) -> str:
        path = self.tmp / name
        os.mkfifo(path)
        return str(path)

    def create(self, **kw: Any) -> api.CreateTaskRequest:
        return api.CreateTaskRequest(id="c1", bundle=str(self.bundle), options=self.options(), **kw)

    def leftovers(self) -> list[int]:
        pids = []
        for f in [*self.root.glob("*/*/pid"), *self.root.glob("*/*/exec-pids")]:
            pids += [int(p) for p in f.read_text().split()]
        return pids


@pytest.fixture
def env(tmp_path: Path, subreaper: None) -> Iterator[Env]:
    runc = tmp_path / "runc"
    runc.write_text(FAKE_RUNC.replace("@PYTHON@", sys.executable))
    runc.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(SPEC))
    e = Env(tmp_path, runc, bundle, tmp_path / "state")
    try:
        yield e
    finally:  # a failed test must not leave its "containers" running
        for pid in e.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


async def read_fifo(path: str) -> AsyncIterator[bytes]:
    """Yield what arrives on an output FIFO until EOF."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    try:
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return
            yield data
    finally:
        os.close(fd)


async def read_line(lines: AsyncIterator[bytes], buf: list[bytes]) -> bytes:
    """The next line from an output FIFO (``buf`` keeps what came after it)."""
    data = b"".join(buf)
    while b"\n" not in data:
        data += await anext(lines)
    line, rest = data.split(b"\n", 1)
    buf[:] = [rest]
    return line


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


# -- lifecycle through the handlers -------------------------------------------------------------


def test_lifecycle_create_start_exec_kill_wait_delete(env: Env) -> None:
    env.init('echo hello; read -r line; echo "got $line"; echo oops >&2; exec sleep 1000\n')
    stdin, stdout = env.fifo("stdin"), env.fifo("stdout")
    stderr = f"file://{env.tmp}/logs/stderr.log"

    async def main() -> None:
        svc, pub = make_service()
        created = await call(
            svc,
            "Create",
            env.create(stdin=stdin, stdout=stdout, stderr=stderr),
            api.CreateTaskResponse,
        )
        pid = created.pid
        assert pid == int((env.bundle / "init.pid").read_text()) > 0
        [create] = pub.of("/tasks/create")
        assert (create.container_id, create.bundle, create.pid) == ("c1", str(env.bundle), pid)
        assert (create.io.stdin, create.io.stdout, create.io.stderr) == (stdin, stdout, stderr)
        state = await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        assert (state.status, state.pid, state.stdout) == (TaskStatus.CREATED, pid, stdout)
        # The runtime options were recorded for a later `delete` action.
        assert f"binary={env.runc}" in (env.bundle / "runtime-options").read_text()
        connect = await call(svc, "Connect", api.ConnectRequest(id="c1"), api.ConnectResponse)
        assert connect.task_pid == pid

        out = read_fifo(stdout)
        buf: list[bytes] = []
        started = await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        assert started.pid == pid
        assert await read_line(out, buf) == b"hello"
        writer = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"ping\n")
        assert await read_line(out, buf) == b"got ping"
        state = await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        assert state.status == TaskStatus.RUNNING

        pids = await call(svc, "Pids", api.PidsRequest(id="c1"), api.PidsResponse)
        assert [p.pid for p in pids.processes] == [pid]

        await call(svc, "Pause", api.PauseRequest(id="c1"), Empty)
        state = await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        assert state.status == TaskStatus.PAUSED
        with pytest.raises(FailedPrecondition, match="cannot pause a paused"):
            await call(svc, "Pause", api.PauseRequest(id="c1"), Empty)
        await call(svc, "Resume", api.ResumeRequest(id="c1"), Empty)

        # An exec with its own stdout FIFO, exiting by itself with status 3.
        exec_out = env.fifo("exec-stdout")
        spec = exec_spec("echo exec-out; exit 3\n")
        exec_req = api.ExecProcessRequest(id="c1", exec_id="e1", stdout=exec_out, spec=spec)
        await call(svc, "Exec", exec_req, Empty)
        with pytest.raises(AlreadyExists):
            await call(svc, "Exec", exec_req, Empty)
        exec_lines = read_fifo(exec_out)
        exec_buf: list[bytes] = []
        exec_started = await call(
            svc, "Start", api.StartRequest(id="c1", exec_id="e1"), api.StartResponse
        )
        assert await read_line(exec_lines, exec_buf) == b"exec-out"
        waited = await call(svc, "Wait", api.WaitRequest(id="c1", exec_id="e1"), api.WaitResponse)
        assert waited.exit_status == 3 and waited.exited_at.seconds > 0
        exec_state = await call(
            svc, "State", api.StateRequest(id="c1", exec_id="e1"), api.StateResponse
        )
        assert (exec_state.status, exec_state.exit_status) == (TaskStatus.STOPPED, 3)
        assert exec_state.pid == exec_started.pid != pid
        deleted = await call(
            svc, "Delete", api.DeleteRequest(id="c1", exec_id="e1"), api.DeleteResponse
        )
        assert (deleted.pid, deleted.exit_status) == (exec_started.pid, 3)
        with pytest.raises(NotFound, match="process e1 does not exist"):
            await call(svc, "State", api.StateRequest(id="c1", exec_id="e1"), api.StateResponse)

        await call(svc, "Kill", api.KillRequest(id="c1", signal=signal.SIGTERM), Empty)
        waited = await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        assert waited.exit_status == 128 + signal.SIGTERM
        assert [c async for c in out] == []  # the copy reached EOF and closed the FIFO
        with pytest.raises(NotFound, match="already finished"):
            await call(svc, "Kill", api.KillRequest(id="c1", signal=9), Empty)
        state = await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        assert (state.status, state.exit_status) == (TaskStatus.STOPPED, 143)
        assert not svc.shutdown_requested.is_set()
        await call(svc, "Shutdown", api.ShutdownRequest(id="c1"), Empty)
        assert not svc.shutdown_requested.is_set()  # a container is still there

        deleted = await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        assert (deleted.pid, deleted.exit_status) == (pid, 143)
        assert deleted.exited_at == waited.exited_at
        assert svc.containers == {}
        with pytest.raises(NotFound):
            await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        await call(svc, "Shutdown", api.ShutdownRequest(id="c1"), Empty)
        assert svc.shutdown_requested.is_set()
        os.close(writer)

        assert pub.topics() == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete",
        ]
        exec_exit, init_exit = pub.of("/tasks/exit")
        assert (exec_exit.id, exec_exit.pid, exec_exit.exit_status) == ("e1", exec_started.pid, 3)
        assert (init_exit.id, init_exit.pid, init_exit.exit_status) == ("c1", pid, 143)
        [start] = pub.of("/tasks/start")
        assert (start.container_id, start.pid) == ("c1", pid)
        [exec_start] = pub.of("/tasks/exec-started")
        assert (exec_start.exec_id, exec_start.pid) == ("e1", exec_started.pid)
        [delete] = pub.of("/tasks/delete")
        assert (delete.container_id, delete.pid, delete.exit_status) == ("c1", pid, 143)

    run(main())
    assert (env.tmp / "logs" / "stderr.log").read_bytes() == b"oops\n"
    calls = [c.split()[0] for c in env.calls()]
    assert calls == ["create", "start", "ps", "pause", "resume", "exec", "kill", "delete"]
    assert env.calls()[-1] == "delete --force c1"
    assert not (env.root / "testns" / "c1").exists()


def test_exit_right_after_start_is_published_after_task_start(env: Env) -> None:
    env.init("exit 7\n")

    async def main() -> None:
        svc, pub = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        waited = await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        assert waited.exit_status == 7
        assert pub.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit"]
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_init_exit_is_published_after_the_exec_exits(env: Env) -> None:
    env.init("exec sleep 1000\n")

    async def main() -> None:
        svc, pub = make_service()
        created = await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        spec = exec_spec("exec sleep 1000\n")
        await call(svc, "Exec", api.ExecProcessRequest(id="c1", exec_id="e1", spec=spec), Empty)
        await call(svc, "Start", api.StartRequest(id="c1", exec_id="e1"), api.StartResponse)
        await call(svc, "Kill", api.KillRequest(id="c1", signal=signal.SIGKILL), Empty)
        # Poll until the reaper has the init's exit; its handler then waits for the exec.
        while os.path.exists(f"/proc/{created.pid}"):
            await asyncio.sleep(0.002)
        for _ in range(5):
            await asyncio.sleep(0)
        assert "/tasks/exit" not in pub.topics()
        state = await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        assert state.status == TaskStatus.RUNNING  # not stopped before its exit is published
        await call(svc, "Kill", api.KillRequest(id="c1", exec_id="e1", signal=9), Empty)
        waited = await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        assert waited.exit_status == 137
        exits = pub.of("/tasks/exit")
        assert [(e.id, e.exit_status) for e in exits] == [("e1", 137), ("c1", 137)]
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        assert pub.topics()[-1] == "/tasks/delete"

    run(main())


def test_close_io_gives_the_process_eof_after_buffered_input(env: Env) -> None:
    env.init('cat; echo "cat ended"; exec sleep 1000\n')
    stdin, stdout = env.fifo("stdin"), env.fifo("stdout")

    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "Create", env.create(stdin=stdin, stdout=stdout), api.CreateTaskResponse)
        out = read_fifo(stdout)
        buf: list[bytes] = []
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        writer = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"last words\n")
        # The writer stays open (ctr still attached); CloseIO alone ends the input.
        await call(svc, "CloseIO", api.CloseIORequest(id="c1", stdin=True), Empty)
        assert await read_line(out, buf) == b"last words"
        assert await read_line(out, buf) == b"cat ended"
        os.close(writer)
        await call(svc, "Kill", api.KillRequest(id="c1", signal=9), Empty)
        await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_requests_refused_by_the_service(env: Env) -> None:
    env.init("exec sleep 1000\n")

    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        with pytest.raises(InvalidArgument, match="already exists"):
            await call(svc, "Create", env.create(), api.CreateTaskResponse)
        with pytest.raises(InvalidArgument, match="exec id must not be empty"):
            await call(svc, "Exec", api.ExecProcessRequest(id="c1"), Empty)
        with pytest.raises(FailedPrecondition):
            await call(svc, "Resume", api.ResumeRequest(id="c1"), Empty)
        with pytest.raises(NotFound):
            await call(svc, "Start", api.StartRequest(id="c1", exec_id="nope"), api.StartResponse)
        bad_type = api.UpdateTaskRequest(id="c1", resources=AnyPb(type_url="x.Y", value=b"{}"))
        with pytest.raises(InvalidArgument, match="unsupported resources type"):
            await call(svc, "Update", bad_type, Empty)
        bad_json = api.UpdateTaskRequest(
            id="c1", resources=AnyPb(type_url=OCI_RESOURCES, value=b"{nope")
        )
        with pytest.raises(InvalidArgument, match="not valid JSON"):
            await call(svc, "Update", bad_json, Empty)
        resources = b'{"memory": {"limit": 1048576}}'
        update = api.UpdateTaskRequest(
            id="c1", resources=AnyPb(type_url=OCI_RESOURCES, value=resources)
        )
        await call(svc, "Update", update, Empty)
        assert (env.root / "testns" / "c1" / "resources").read_bytes() == resources
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        assert "update --resources - c1" in env.calls()

    run(main())


def test_failed_create_undoes_everything(env: Env) -> None:
    (env.bundle / "fail-create").write_text("rootfs is not a directory")
    stdout = env.fifo("stdout")

    async def main() -> None:
        svc, pub = make_service()
        before = open_fds()
        with pytest.raises(ShimError, match="create failed: rootfs is not a directory") as info:
            await call(svc, "Create", env.create(stdout=stdout), api.CreateTaskResponse)
        assert to_status(info.value).code == Code.UNKNOWN
        assert open_fds() == before  # pipes and FIFOs closed
        assert svc.containers == {} and pub.events == []
        assert [c.split()[0] for c in env.calls()] == ["create", "delete"]
        # The id is free again.
        (env.bundle / "fail-create").unlink()
        env.init("exit 0\n")
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_create_from_checkpoint_runs_nothing_until_start(env: Env) -> None:
    async def main() -> None:
        svc, pub = make_service()
        req = env.create(checkpoint=str(env.tmp / "checkpoint"))
        created = await call(svc, "Create", req, api.CreateTaskResponse)
        assert created.pid == 0
        state = await call(svc, "State", api.StateRequest(id="c1"), api.StateResponse)
        assert state.status == TaskStatus.CREATED
        [create] = pub.of("/tasks/create")
        assert create.checkpoint == str(env.tmp / "checkpoint")
        with pytest.raises(FailedPrecondition):
            await call(svc, "Pause", api.PauseRequest(id="c1"), Empty)
        # Deleting it before Start: runc knows no such container, which is fine.
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        assert pub.topics() == ["/tasks/create", "/tasks/delete"]
        assert [c.split()[0] for c in env.calls()] == ["delete"]
        with pytest.raises(NotFound):
            await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())
    spec = json.loads((env.bundle / "config.json").read_text())
    assert spec["annotations"]["org.criu.config"] == str(env.bundle / "criu.conf")


def test_delete_of_a_running_container_is_refused(env: Env) -> None:
    env.init("exec sleep 1000\n")

    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        with pytest.raises(FailedPrecondition, match="cannot delete a running"):
            await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)
        assert "c1" in svc.containers
        await call(svc, "Kill", api.KillRequest(id="c1", signal=9, all=True), Empty)
        assert env.calls()[-1] == "kill --all c1 9"
        await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_create_options_restore_from_their_image_path(tmp_path: Path) -> None:
    """containerd's client sends a runtime not named io.containerd.runc* the restore image
    path in containerd.linux.runc.CreateOptions (WithRestoreImagePath); its work path is
    CRIU's work dir, as the reference's criu_work_path."""
    from shim.api.containerd.linux.runctypes import runc_pb2

    (tmp_path / "config.json").write_text("{}")
    opts = runc_pb2.CreateOptions(criu_image_path="/ck/img", criu_work_path="/ck/work")
    req = api.CreateTaskRequest(id="c", bundle=str(tmp_path), options=pack(opts))
    assert _restore_source(req) == RestoreSource("/ck/img", work_dir="/ck/work")
    runc = oci_pb2.Options(criu_image_path="/ck/img")  # containerd also sets checkpoint
    req = api.CreateTaskRequest(
        id="c", bundle=str(tmp_path), checkpoint="/ck/img", options=pack(runc)
    )
    assert _restore_source(req) == RestoreSource("/ck/img")
    plain = runc_pb2.CreateOptions(no_pivot_root=True)
    req = api.CreateTaskRequest(id="c", bundle=str(tmp_path), options=pack(plain))
    assert _restore_source(req) is None


def test_exec_process_spec_takes_the_request_terminal_flag(env: Env) -> None:
    """The exec's process spec says terminal as the Exec request does (runc refuses a console
    socket for a process without a terminal); a spec that is not JSON is refused."""
    env.init("exec sleep 1000\n")

    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        spec = exec_spec("exit 0\n", terminal=True)
        req = api.ExecProcessRequest(id="c1", exec_id="e1", spec=spec, terminal=False)
        await call(svc, "Exec", req, Empty)
        await call(svc, "Start", api.StartRequest(id="c1", exec_id="e1"), api.StartResponse)
        await call(svc, "Wait", api.WaitRequest(id="c1", exec_id="e1"), api.WaitResponse)
        process = json.loads((env.root / "testns" / "c1" / "exec-process.json").read_text())
        assert process["terminal"] is False
        assert process["args"] == ["sh", "-c", "exit 0\n"]
        with pytest.raises(InvalidArgument, match="bad process spec"):
            bad = api.ExecProcessRequest(id="c1", exec_id="e2", spec=AnyPb(value=b"[1]"))
            await call(svc, "Exec", bad, Empty)
        await call(svc, "Kill", api.KillRequest(id="c1", signal=9), Empty)
        await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_failed_exec_start_closes_its_stdio_and_ends_its_wait(env: Env) -> None:
    """containerd's client waits for an exec's output FIFOs to reach EOF before it reports a
    failed start: the shim lets go of them at once, and a pending Wait returns."""
    env.init("exec sleep 1000\n")
    (env.bundle / "fail-exec").write_text("exec failed: no such file")

    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        out = env.fifo("exec-out")
        reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
        try:
            req = api.ExecProcessRequest(id="c1", exec_id="e1", stdout=out, spec=exec_spec(""))
            await call(svc, "Exec", req, Empty)
            waiting = asyncio.ensure_future(
                call(svc, "Wait", api.WaitRequest(id="c1", exec_id="e1"), api.WaitResponse)
            )
            with pytest.raises(ShimError, match="no such file"):
                await call(svc, "Start", api.StartRequest(id="c1", exec_id="e1"), api.StartResponse)
            await asyncio.wait_for(waiting, 5)
            assert os.read(reader, 10) == b""  # EOF: no writer left (held, it would be EAGAIN)
        finally:
            os.close(reader)
        await call(svc, "Delete", api.DeleteRequest(id="c1", exec_id="e1"), api.DeleteResponse)
        await call(svc, "Kill", api.KillRequest(id="c1", signal=9), Empty)
        await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_host_pid_init_exit_kills_every_process_first(env: Env) -> None:
    """In the host's PID namespace the container's other processes outlive its init: the
    shim kills them all (runc kill --all) before it publishes the init's exit."""
    (env.bundle / "config.json").write_text(json.dumps({"linux": {"namespaces": []}}))
    env.init("exec sleep 1000\n")

    async def main() -> None:
        svc, pub = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        spec = exec_spec("exec sleep 1000\n")
        await call(svc, "Exec", api.ExecProcessRequest(id="c1", exec_id="e1", spec=spec), Empty)
        await call(svc, "Start", api.StartRequest(id="c1", exec_id="e1"), api.StartResponse)
        await call(svc, "Kill", api.KillRequest(id="c1", signal=signal.SIGKILL), Empty)
        waited = await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        assert waited.exit_status == 137
        assert "kill --all c1 9" in env.calls()
        exits = pub.of("/tasks/exit")
        assert [(e.id, e.exit_status) for e in exits] == [("e1", 137), ("c1", 137)]
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


def test_own_pid_namespace_init_exit_kills_nothing_else(env: Env) -> None:
    """With a PID namespace of its own the kernel kills the rest with the init: no kill --all
    from the shim (its exec is killed here by the test, and only then the init exit comes)."""
    env.init("exit 5\n")

    async def main() -> None:
        svc, _ = make_service()
        await call(svc, "Create", env.create(), api.CreateTaskResponse)
        await call(svc, "Start", api.StartRequest(id="c1"), api.StartResponse)
        waited = await call(svc, "Wait", api.WaitRequest(id="c1"), api.WaitResponse)
        assert waited.exit_status == 5
        assert not [c for c in env.calls() if c.startswith("kill")]
        await call(svc, "Delete", api.DeleteRequest(id="c1"), api.DeleteResponse)

    run(main())


# -- restore by spec annotation (the CRI endpoint's restore) -------------------------------------


def _annotated_bundle(tmp_path: Path, value: str) -> str:
    (tmp_path / "config.json").write_text(
        json.dumps({"ociVersion": "1.0.2", "annotations": {RESTORE_ANNOTATION: value}})
    )
    return str(tmp_path)


def test_restore_source_from_the_spec_annotation(tmp_path: Path) -> None:
    images = tmp_path / "ck" / "checkpoint"  # private: see tests/test_restore_annotation.py
    images.mkdir(parents=True, mode=0o700)
    req = api.CreateTaskRequest(id="c1", bundle=_annotated_bundle(tmp_path, str(images)))
    assert _restore_source(req) == RestoreSource(
        str(images), unpacking=str(tmp_path / "ck" / UNPACKING))  # the endpoint's file


@pytest.mark.parametrize(
    ("value", "checkpoint", "match"),
    [
        ("ck/checkpoint", "", "is not absolute"),
        ("/a/../b", "", "contains '..'"),
        ("/var/ck", "/other", "were both given"),
    ],
)
def test_restore_annotation_refused(tmp_path: Path, value: str, checkpoint: str,
                                    match: str) -> None:
    req = api.CreateTaskRequest(id="c1", bundle=_annotated_bundle(tmp_path, value),
                                checkpoint=checkpoint)
    with pytest.raises(InvalidArgument, match=match):
        _restore_source(req)


def test_no_annotation_no_restore(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"annotations": {"a": "b"}}))
    assert _restore_source(api.CreateTaskRequest(id="c1", bundle=str(tmp_path))) is None
