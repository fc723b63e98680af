"""The fork server's own pieces: its fork without Python's at-fork handlers, and the offer of
its memory to KSM. Each runs in a fresh interpreter (a fork inside pytest's process would
fork pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_libc_fork_forks_a_working_child_without_the_at_fork_handlers() -> None:
    out = _run("""
        import os, random, threading
        from shim.forkserver import _libc_fork

        marks = []
        os.register_at_fork(before=lambda: marks.append("before"),
                            after_in_child=lambda: marks.append("child"),
                            after_in_parent=lambda: marks.append("parent"))
        fork = _libc_fork()
        read_end, write_end = os.pipe()
        mine = random.random()
        pid = fork()
        if pid == 0:
            ok = threading.current_thread() is threading.main_thread()
            os.write(write_end, f"{ok} {random.random() != mine} {marks}".encode())
            os._exit(7)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        print(os.read(read_end, 200).decode(), os.waitstatus_to_exitcode(status), marks)
        pid = os.fork()  # os.fork, for contrast, runs them
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(marks)
    """)
    after_libc_fork, after_os_fork = out.splitlines()
    # the child: its main thread is threading's main thread, random was reseeded, no handler
    # ran; it exited with its own status; no handler ran in the parent either
    assert after_libc_fork == "True True [] 7 []"
    assert after_os_fork == "['before', 'parent']"


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/ksm"), reason="kernel without KSM")
def test_offer_to_ksm_marks_the_writable_private_mappings() -> None:
    out = _run("""
        from shim.forkserver import offer_to_ksm

        print(offer_to_ksm())
        flags = {}
        name = None
        for line in open("/proc/self/smaps"):
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                name = (head[1], head[5] if len(head) > 5 else "")
            elif head[0] == "VmFlags:":
                flags[name] = head[1:]
        for (perms, path), vm in flags.items():
            print(perms, path or "-", "mg" in vm)
    """)
    lines = out.splitlines()
    assert int(lines[0]) > 0
    mappings = [line.split() for line in lines[1:]]
    assert ["rw-p", "[heap]", "True"] in mappings
    for perms, _path, merged in mappings:
        writable_private = "w" in perms and "p" in perms
        assert merged == str(writable_private), (perms, _path, merged)


def test_set_environ_changes_only_what_differs() -> None:
    out = _run("""
        import json, os
        from shim import forkserver

        os.environ.clear()
        os.environ.update({"KEEP": "1", "CHANGE": "old", "DROP": "x"})
        current = dict(os.environ)
        changed = []
        real = type(os.environ)
        class Watch(real):
            def __setitem__(self, k, v):
                changed.append(("set", k)); super().__setitem__(k, v)
            def __delitem__(self, k):
                changed.append(("del", k)); super().__delitem__(k)
        os.environ.__class__ = Watch
        forkserver.set_environ({"KEEP": "1", "CHANGE": "new", "ADD": "2"}, current)
        print(json.dumps([dict(os.environ), os.getenv("CHANGE"), sorted(changed)]))
    """)
    environ, seen_by_getenv, changed = json.loads(out)
    assert environ == {"KEEP": "1", "CHANGE": "new", "ADD": "2"}
    assert seen_by_getenv == "new"
    assert changed == [["del", "DROP"], ["set", "ADD"], ["set", "CHANGE"]]


def test_a_daemon_is_the_servers_child_in_a_session_of_its_own_and_is_reaped() -> None:
    out = _run("""
        import os, signal, time
        import shim.forkserver as fs
        from shim.warm import Request

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # as serve_forever does
        read_end, write_end = os.pipe()

        def become_daemon(req):
            handler = signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
            handler = handler and signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
            os.write(write_end, f"{os.getsid(0) == os.getpid()} {os.getppid()} {handler}".encode())
            os._exit(0)

        fs._become_daemon = become_daemon
        pid = fs._fork_daemon(Request({}, [], ()))
        os.close(write_end)
        print(os.read(read_end, 200).decode(), os.getpid())
        for _ in range(200):  # the kernel reaps it: no zombie is left behind
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.01)
        print(os.path.exists(f"/proc/{pid}"))
    """)
    told, gone = out.splitlines()
    own_session, parent, default_sigchld, server = told.split()
    # its own session; the fork server's child (one fork, no middle process); SIGCHLD back
    # to the default, so its own children (runc, CRIU) can be waited for; SIGPIPE ignored
    # (by the interpreter: shim.daemon.serve no longer sets it)
    assert (own_session, parent, default_sigchld) == ("True", server, "True")
    assert gone == "False"


def test_a_spare_serves_the_request_handed_to_it_and_ends_when_the_server_is_gone(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = _run(f"""
        import asyncio, os, signal, socket, time
        import shim.forkserver as fs
        from shim.api.containerd.task.v2 import shim_pb2 as api
        from shim.ttrpc import Client
        from shim.warm import Request

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # as serve_forever does
        fs._SERVER_ENV.update(os.environ)

        def alive(pid):
            for _ in range(300):
                if not os.path.exists(f"/proc/{{pid}}"):
                    return False
                time.sleep(0.01)
            return True

        # a spare the fork server goes away from: it ends
        fs._make_spare()
        gone = fs._spare
        fs._spare = None
        gone.sock.close()
        print(alive(gone.pid))

        # a spare that gets a request: it is the daemon, serving the socket it was given
        fs._make_spare()
        spare = fs._spare
        time.sleep(0.2)
        title = open(f"/proc/{{spare.pid}}/cmdline").read().split("\\0")[:2]
        path = "{tmp_path}/shim.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(8)
        env = dict(os.environ)
        argv = ["shim", "-namespace", "ns", "-id", "c1", "-address", "/nonexistent"]
        req = Request({{"cwd": "{bundle}", "env": env, "argv": argv}}, [listener.fileno()], ())
        pid = fs._fork_daemon(req)
        listener.close()

        async def connect():
            client = await Client.connect(path)
            reply = await client.call("containerd.task.v2.Task", "Connect",
                                      api.ConnectRequest(id="c1").SerializeToString(),
                                      timeout=10)
            await client.close()
            return api.ConnectResponse.FromString(reply).shim_pid

        shim_pid = asyncio.run(connect())
        print(pid == spare.pid, fs._spare is None, shim_pid == pid, title,
              os.readlink(f"/proc/{{pid}}/cwd"))
        os.kill(pid, signal.SIGKILL)

        # a spare that died: the request is forked a daemon of its own instead
        fs._make_spare()
        dead = fs._spare
        os.kill(dead.pid, signal.SIGKILL)
        alive(dead.pid)
        fs._become_daemon = lambda req: os._exit(0)
        req = Request({{"cwd": "/", "env": {{}}, "argv": []}}, [0], ())
        print(fs._fork_daemon(req) != dead.pid)
    """)
    gone, served, fallback = out.splitlines()
    assert gone == "False"  # end-of-file from its fork server ends a waiting spare
    # the spare's pid is the answer, there is no spare until the server makes the next one,
    # the daemon answers on the socket it was handed, in the bundle it was sent to
    assert served == f"True True True ['containerd-shim-pyrunc-v2', 'spare'] {bundle}"
    assert fallback == "True"
