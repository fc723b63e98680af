"""The fork server's own pieces: its fork without Python's at-fork handlers, and the offer of
its memory to KSM. Each runs in a fresh interpreter (a fork inside pytest's process would
fork pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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
