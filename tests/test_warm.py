"""Warm processes: the code stamp, the request/answer protocol and its serve loop, the socket
helpers, and the command line a forked daemon shows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim import warm
from shim.warm import Request, Unavailable, bind_unique, code_stamp, request, serve


def test_code_stamp_is_stable_and_sees_every_change(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    first = code_stamp(str(tmp_path))
    assert code_stamp(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("still ignored")
    assert code_stamp(str(tmp_path)) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    os.utime(tmp_path / "sub" / "b.py", ns=(0, time.time_ns() + 10**9))
    second = code_stamp(str(tmp_path))
    assert second != first
    (tmp_path / "c.py").write_text("")
    assert code_stamp(str(tmp_path)) != second


def test_set_cmdline_rewrites_proc_cmdline() -> None:
    """A process started with room on its command line shows the shim's argv instead."""
    script = (
        "import sys, time\n"
        "from shim.proctitle import set_cmdline\n"
        "set_cmdline(['containerd-shim-pyrunc-v2', '-namespace', 'ns', '-id', 'c1'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "-" * 200], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        argv = [a.decode() for a in raw.split(b"\0") if a]
        assert argv == ["containerd-shim-pyrunc-v2", "-namespace", "ns", "-id", "c1"]
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "containerd-shim"
    finally:
        proc.kill()
        proc.wait()


# -- sockets ---------------------------------------------------------------------------


def test_bind_unique_serves_once_and_replaces_a_dead_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "d" / "s.sock")
    bound = bind_unique(path)
    assert bound is not None
    sock, _inode = bound
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
    assert bind_unique(path) is None  # a live server serves there
    sock.close()  # dead: its file stays behind
    again = bind_unique(path)
    assert again is not None
    warm.unlink_if_ours(path, again[1] + 1)  # another server's file: kept
    assert os.path.exists(path)
    warm.unlink_if_ours(path, again[1])
    assert not os.path.exists(path)
    again[0].close()


def test_socket_is_live_by_one_rule_and_never_waits(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    assert not warm.socket_is_live(path)  # no file
    Path(path).write_text("")
    assert not warm.socket_is_live(path)  # a file that is no socket: refused
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        assert not warm.socket_is_live(path)  # bound, nobody listens: refused
        listener.listen(0)
        assert warm.socket_is_live(path)
        waiting = []  # fill the backlog: a connect now would wait for room
        while True:
            conn = socket.socket(socket.AF_UNIX)
            conn.setblocking(False)
            waiting.append(conn)
            try:
                conn.connect(path)
            except BlockingIOError:
                break
        started = time.monotonic()
        assert warm.socket_is_live(path)  # busy, not dead
        assert time.monotonic() - started < 0.5
        for conn in waiting:
            conn.close()
    assert not warm.socket_is_live(path)  # its server is gone, its file stays: refused
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(path)
        assert warm.socket_is_live(path)  # not a stream socket: cannot judge, left alone


def test_sweep_removes_dead_servers_files_and_keeps_live_ones(tmp_path: Path) -> None:
    d = str(tmp_path)
    live = bind_unique(f"{d}/live.sock", lock=True)
    dead = bind_unique(f"{d}/dead.sock", lock=True)
    mine = bind_unique(f"{d}/mine.sock", lock=True)
    assert live is not None and dead is not None and mine is not None
    dead[0].close()  # killed: its socket and lock files stay behind
    mine[0].close()  # the caller's own path is never judged
    Path(f"{d}/gone.sock.lock").write_text("")  # a lock whose socket went
    Path(f"{d}/other.txt").write_text("")
    try:
        assert warm.sweep(d, keep=f"{d}/mine.sock") == [f"{d}/dead.sock"]
        # no lock file left but the caller's own: each is of use only while held
        assert sorted(os.listdir(d)) == ["live.sock", "mine.sock", "mine.sock.lock", "other.txt"]
        assert bind_unique(f"{d}/live.sock", lock=True) is None  # still served
    finally:
        live[0].close()


def test_sweep_leaves_no_lock_beside_a_live_server_that_takes_none(tmp_path: Path) -> None:
    """A network rebuild service binds its socket in the run directory without a lock: the
    sweep's own lock file must not stay beside it (nothing else would ever remove it)."""
    path = tmp_path / "net-0123456789ab.sock"
    with socket.socket(socket.AF_UNIX) as service:
        service.bind(str(path))
        service.listen(8)
        assert warm.sweep(str(tmp_path)) == []
        assert os.listdir(tmp_path) == [path.name]
    assert warm.sweep(str(tmp_path)) == [str(path)]  # once it is dead, it goes
    assert os.listdir(tmp_path) == []


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again(tmp_path: Path) -> None:
    """A server ending removes its lock file while holding it; whoever waited on the old
    file must not go on holding a lock nobody else sees."""
    path = str(tmp_path / "s.sock")
    held = warm._lock(path)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(warm._lock(path)))
    waiter.start()
    time.sleep(0.1)  # the waiter opened the file and waits for the lock
    warm._unlink_lock_held(path)
    os.close(held)
    waiter.join(5)
    assert got, "the waiter never got the lock"
    try:
        assert os.fstat(got[0]).st_ino == os.stat(f"{path}.lock").st_ino
    finally:
        os.close(got[0])


# -- the protocol: one serve loop, one client ------------------------------------------


class Server:
    """:func:`serve` in a thread; the handler records requests and answers a fixed pid."""

    def __init__(self, path: str, fds: int, code: str | None = None) -> None:
        self.path = path
        self.fds = fds
        self.seen: list[Request] = []
        self.passed: list[list[bytes]] = []
        # the code it watches: by default the socket's directory (the package's own files may
        # change while the tests run)
        watch = warm.CodeWatch.start(code or os.path.dirname(path))
        self.thread = threading.Thread(
            target=serve, args=(path, self.handle),
            kwargs={"fds": fds, "idle": 10.0, "watch": watch},
        )

    def handle(self, req: Request) -> int:
        self.seen.append(req)
        self.passed.append([os.read(fd, 10) for fd in req.fds])
        return 4242

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not os.path.exists(self.path):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():  # a stale request ends it
            null = os.open(os.devnull, os.O_RDONLY)
            try:
                with pytest.raises(Unavailable, match="stale"):
                    fds = [null] * self.fds
                    request(self.path, {"stamp": "other"}, what="test", fds=fds)
            finally:
                os.close(null)
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "warm.sock")


def _raw(path: str, message: dict[str, object]) -> object:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(path)
        conn.sendall(json.dumps(message).encode())
        conn.shutdown(socket.SHUT_WR)
        return json.loads(conn.recv(4096))


def test_request_gets_the_handlers_pid_with_fields_and_fds(sock_path: str) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"hello")
    try:
        with Server(sock_path, fds=1) as server:
            assert request(sock_path, {"x": [1, "y"]}, what="test", fds=[read_end]) == 4242
            assert server.seen[0].fields["x"] == [1, "y"]
            assert server.passed == [[b"hello"]]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_refused_elsewhere_and_stale(sock_path: str) -> None:
    with Server(sock_path, fds=0) as server:
        read_end, write_end = os.pipe()
        try:  # an fd it does not expect: refused, and the fd is closed again
            with pytest.raises(Unavailable, match="refused") as info:
                request(sock_path, {}, what="test", fds=[read_end])
            assert not info.value.restart
        finally:
            os.close(read_end)
            os.close(write_end)
        here = warm.where_am_i()
        stamp = warm.code_identity()
        elsewhere = {**here, "net": "net:[1]"}
        assert _raw(sock_path, {"stamp": stamp, "place": elsewhere}) == {"error": "elsewhere"}
        assert _raw(sock_path, [1, 2]) == {"error": "refused"}  # type: ignore[arg-type]
        assert _raw(sock_path, {"stamp": stamp, "place": here}) == {"pid": 4242}
        assert _raw(sock_path, {"stamp": "old", "place": here}) == {"error": "stale"}
        server.thread.join(5)
        assert not server.thread.is_alive() and not os.path.exists(sock_path)
        assert len(server.seen) == 1


def test_a_server_whose_code_changed_answers_stale_and_ends(tmp_path: Path) -> None:
    code = tmp_path / "pkg"
    (code / "sub").mkdir(parents=True)
    (code / "sub" / "mod.py").write_text("x = 1\n")
    path = str(tmp_path / "warm.sock")
    with Server(path, fds=0, code=str(code)) as server:
        assert request(path, {}, what="test") == 4242
        (code / "sub" / "mod.py").write_text("x = 2\n")
        with pytest.raises(Unavailable, match="stale") as info:
            request(path, {}, what="test")
        assert info.value.restart
        server.thread.join(5)
        assert not server.thread.is_alive() and not os.path.exists(path)
    assert len(server.seen) == 1


@pytest.mark.parametrize("change", ["write", "touch", "create", "remove", "rename", "mkdir"])
def test_code_watch_sees_each_change_to_python_files_and_no_other(
    tmp_path: Path, change: str
) -> None:
    (tmp_path / "sub" / "__pycache__").mkdir(parents=True)
    mod = tmp_path / "sub" / "mod.py"
    mod.write_text("x = 1\n")
    watch = warm.CodeWatch.start(str(tmp_path))
    assert watch is not None
    try:
        # bytecode, other files, a new __pycache__: not code
        (tmp_path / "sub" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
        (tmp_path / "notes.txt").write_text("x")
        (tmp_path / "__pycache__").mkdir()
        (tmp_path / "sub" / "mod.py.swp").write_text("x")
        assert not watch.changed()
        if change == "write":
            mod.write_text("x = 2\n")
        elif change == "touch":
            os.utime(mod)
        elif change == "create":
            (tmp_path / "new.py").write_text("")
        elif change == "remove":
            mod.unlink()
        elif change == "rename":
            (tmp_path / "sub" / "mod.py.swp").rename(tmp_path / "sub" / "other.py")
        else:
            (tmp_path / "newpkg").mkdir()
        assert watch.changed()
        assert watch.changed()  # it stays changed
    finally:
        watch.close()


def test_after_runs_once_each_request_is_answered_and_closed(sock_path: str) -> None:
    seen: list[str] = []

    def after() -> None:  # the caller already has its answer and end-of-file
        seen.append("after")

    watch = warm.CodeWatch.start(os.path.dirname(sock_path))
    thread = threading.Thread(target=serve, args=(sock_path, lambda _: seen.append("h") or 7),
                              kwargs={"idle": 10.0, "watch": watch, "after": after})
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(sock_path):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert request(sock_path, {}, what="test") == 7
        with pytest.raises(Unavailable, match="elsewhere"):
            request(sock_path, {}, what="test", place={"net": "net:[1]"})
        assert request(sock_path, {}, what="test") == 7
    finally:
        with pytest.raises(Unavailable, match="stale"):
            request(sock_path, {"stamp": "other"}, what="test")
        thread.join(5)
    assert seen == ["h", "after", "h", "after"]  # none after a refusal or a stale answer


def test_no_server_is_worth_a_restart(sock_path: str) -> None:
    with pytest.raises(Unavailable, match="no test") as info:
        request(sock_path, {}, what="test")
    assert info.value.restart


def test_idle_server_ends_and_removes_its_socket(sock_path: str) -> None:
    thread = threading.Thread(target=serve, args=(sock_path, lambda _: 1), kwargs={"idle": 0.2})
    thread.start()
    thread.join(5)
    assert not thread.is_alive() and not os.path.exists(sock_path)


def test_namespace_list_is_the_one_of_the_host_test() -> None:
    assert set(warm.where_am_i()) == {*warm.NAMESPACES, "cgroups"}
    assert "time" in warm.NAMESPACES


def _fake_proc(root: Path, procs: dict[str, tuple[str, dict[str, str]]]) -> str:
    """A /proc with ``name -> (comm, {namespace: link})`` entries."""
    for name, (comm, links) in procs.items():
        (root / name / "ns").mkdir(parents=True)
        (root / name / "comm").write_text(comm + "\n")
        for ns, link in links.items():
            os.symlink(link, root / name / "ns" / ns)
    return str(root)


HOST = {ns: f"{ns}:[40265{i}]" for i, ns in enumerate(warm.NAMESPACES)}


@pytest.mark.parametrize(
    ("procs", "host"),
    [
        # the host: self shares kthreadd's namespaces
        ({"2": ("kthreadd", HOST), "self": ("containerd", HOST)}, True),
        # a test's network namespace
        ({"2": ("kthreadd", HOST), "self": ("containerd", {**HOST, "net": "net:[9]"})}, False),
        # a child PID namespace with a /proc of its own: pid 2 is not kthreadd (its pid 1
        # shares the caller's namespaces and once passed for the host)
        (
            {
                "1": ("in-namespace.sh", {**HOST, "pid": "pid:[7]"}),
                "2": ("containerd", {**HOST, "pid": "pid:[7]"}),
                "self": ("containerd", {**HOST, "pid": "pid:[7]"}),
            },
            False,
        ),
        # kthreadd's links cannot be read (no pid 2 at all)
        ({"self": ("containerd", HOST)}, False),
    ],
    ids=["host", "other-netns", "child-pidns-own-proc", "no-kthreadd"],
)
def test_in_host_namespaces(tmp_path: Path, procs: dict[str, tuple[str, dict[str, str]]],
                            host: bool) -> None:
    assert warm.in_host_namespaces(_fake_proc(tmp_path, procs)) is host


def test_a_server_whose_socket_was_replaced_ends(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphan (its socket file replaced by another server's) notices and exits."""
    monkeypatch.setattr(warm, "_ORPHAN_CHECK", 0.1)
    thread = threading.Thread(target=serve, args=(sock_path, lambda _: 1))
    thread.start()
    deadline = time.monotonic() + 5
    while not os.path.exists(sock_path):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.3)
    assert thread.is_alive()  # no idle limit: it keeps serving while the file is its own
    os.unlink(sock_path)
    other = bind_unique(sock_path)  # another server takes the path
    assert other is not None
    thread.join(5)
    assert not thread.is_alive()
    assert os.stat(sock_path).st_ino == other[1]  # the new server's file is left alone
    other[0].close()


def test_bind_unique_with_a_lock_serves_once(sock_path: str) -> None:
    first = bind_unique(sock_path, lock=True)
    assert first is not None
    assert bind_unique(sock_path, lock=True) is None
    assert os.path.exists(f"{sock_path}.lock")
    first[0].close()


def test_plug_holes_fills_the_small_object_allocators_free_blocks() -> None:
    """What a forked worker would scatter its new objects into: the free blocks of the warm
    process's pools (read from the allocator's own statistics), filled before it forks."""
    code = (
        "import json\n"
        "from shim import warm\n"
        "junk = [bytes(n % 400 + 20) for n in range(20000)]\n"
        "del junk[::3]\n"  # holes in many pools of many sizes
        "before = warm._free_blocks()\n"
        "warm._plug_holes()\n"
        "print(json.dumps([before, warm._free_blocks(), len(warm._plugs)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True)
    before, after, plugs = json.loads(proc.stdout)
    assert sorted(map(int, before)) == list(range(16, 513, 16))  # every size class parsed
    free = lambda blocks: sum(int(size) * n for size, n in blocks.items() if int(size) >= 32)  # noqa: E731
    assert free(before) > 100_000
    assert free(after) < free(before) / 4
    assert plugs > 1000


@pytest.mark.parametrize("value", [
    {"stamp": "ab", "place": {"net": "net:[4026531840]", "cgroups": "4:memory:/x\n0::/\n"},
     "argv": ["containerd-shim-pyrunc-v2", "-id", "c1"], "env": {"A": "é\"\\\t"}},
    {"pid": 4242}, {"error": "stale"}, [1, "two", None, True, False, ("t",)], {},
])
def test_encode_json_writes_what_json_dumps_sorted_writes(value: object) -> None:
    assert warm.encode_json(value) == json.dumps(value, sort_keys=True)
    assert json.loads(warm.encode_json(value)) == json.loads(json.dumps(value))


def test_encode_json_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="float"):
        warm.encode_json({"x": 1.5})


@pytest.mark.parametrize("text", [
    '{"ociVersion": "1.0.2", "annotations": {"io.kubernetes.cri.sandbox-id": "abc"}}',
    '  [1, -2.5e3, "x\\u00e9\\n", null, true, false, {}, []]\n',
    '"only a string"', "0", '{"a": {"b": {"c": [1e400, -Infinity]}}}',
])
def test_decode_json_reads_what_json_loads_reads(text: str) -> None:
    assert warm.decode_json(text) == json.loads(text)
    assert warm.decode_json(text.encode()) == json.loads(text)


@pytest.mark.parametrize("raw", [
    '{"a": "\u00e9"}'.encode("utf-8-sig"), '{"a": [1]}'.encode("utf-16"),
    '{"a": [1]}'.encode("utf-32-le"), b'{"a": "\\ud800"}',
])
def test_decode_json_reads_bytes_as_json_loads_does(raw: bytes) -> None:
    assert warm.decode_json(raw) == json.loads(raw)


@pytest.mark.parametrize("text", [
    "", "   ", '{"a": 1', '{"a" 1}', '{"a": nan}', '[1] [2]', "\x0b[1]", "{'a': 1}", b"\xff{}",
])
def test_decode_json_refuses_what_json_loads_refuses(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        warm.decode_json(text)


def test_answers_round_trip_and_anything_else_is_refused() -> None:
    assert warm.parse_answer(warm.answer(4242)) == (4242, "")
    assert warm.parse_answer(warm.answer(error="elsewhere")) == (0, "elsewhere")
    assert warm.parse_answer(json.dumps({"pid": 7}).encode()) == (7, "")
    for bad in (b"", b"{}", b'{"pid": -1}', b'{"pid": "7"}', b'{"error": "a"b"}', b"[1]",
                b'{"pid": 7, "x": 1}'):
        with pytest.raises(ValueError):
            warm.parse_answer(bad)


def test_the_start_path_imports_no_json_re_socket_or_hashlib() -> None:
    """``start``'s client side uses built-in modules only (each of these cost every
    ``start`` milliseconds of CPU): the socket address, the code stamp, the place and the
    fork server's socket name."""
    code = (
        "import sys\n"
        "from shim import cli, forkserver, warm\n"
        "cli.socket_address('/run/containerd/containerd.sock', 'default', 'c1')\n"
        "warm.code_identity(); forkserver.socket_path(); warm.in_host_namespaces()\n"
        "warm.encode_json({'a': [1]}); warm.parse_answer(b'{\"pid\": 1}')\n"
        "warm.decode_json(b'{\"annotations\": {\"io.kubernetes.cri.sandbox-id\": \"p\"}}')\n"
        "print(sorted({'json', 're', 'socket', 'hashlib', '_hashlib', 'typing', 'asyncio'}"
        " & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"
