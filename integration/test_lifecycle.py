"""Container lifecycle through ``ctr``, with each runtime (``runc`` is the control).

Strategy: every scenario runs as users run it - ``ctr run``/``ctr t ...`` against the harness's
containerd - once with ``io.containerd.runc.v2`` and once with ``io.containerd.pyrunc.v2``,
and asserts what the reference shim really does (checked against it). Waits poll with a
timeout (``wait_until``); a fixed sleep appears only as an observation window to show that
something does *not* happen (a paused counter not advancing).

Facts of ctr 1.6 these tests rely on: ``ctr run`` forwards its stdin but never closes the
container's stdin at EOF; a non-zero task exit status is reported by ``ctr t rm`` only as a
warning on stderr; a PID 1 without a handler ignores SIGTERM (the kernel's rule for a pid
namespace's init), so a signalled exit is seen on exec processes and with SIGKILL; after
the shim is SIGKILLed containerd cleans up and the task disappears from ``ctr t ls``.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .harness import (
    Containerd,
    Containers,
    Leftovers,
    TaskStatus,
    container_processes,
    freezer_state,
    parent_pid,
    pid_alive,
    proc_cmdline,
    proc_state,
    shim_binary,
    shim_socket_path,
    socket_is_live,
    wait_until,
)

LOOP = "while :; do sleep 0.1; done"


def assert_gone(containerd: Containerd, box: Containers, cid: str) -> None:
    """``cid`` has no task, no container record and left nothing on the host."""
    assert cid not in box.ctr.tasks()
    assert cid not in box.ctr.containers()
    ns = box.ctr.namespace
    wait_until(lambda: containerd.leftovers(ns, cid).clean, 10, message=f"{cid} cleaned up")
    assert containerd.leftovers(ns, cid) == Leftovers()


def assert_served_by_runtime(box: Containers, pid: int) -> None:
    """The parent of container process ``pid`` is the shim binary of ``box.runtime``."""
    shim = parent_pid(pid)
    assert shim is not None
    argv = proc_cmdline(shim)
    assert shim_binary(box.runtime) in {os.path.basename(a) for a in argv[:2]}, argv


# --- ctr run, attached -----------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 7])
def test_run_returns_exit_code(containers: Containers, code: int) -> None:
    cid = containers.new_id("exit")
    proc = containers.run(cid, "/usr/bin/exitcode", str(code), rm=True, check=False)
    assert proc.returncode == code, proc.stderr
    assert cid not in containers.ctr.containers()  # --rm removed it


def test_run_prints_stdout_and_stderr(containers: Containers) -> None:
    cid = containers.new_id("hello")
    proc = containers.run(cid, "sh", "-c", "echo hello; echo oops >&2", rm=True)
    assert proc.stdout == "hello\n"
    assert "oops" in proc.stderr


def test_init_ignores_unhandled_sigterm(containers: Containers) -> None:
    # the kernel drops a default-action signal sent to a pid namespace's init
    cid = containers.new_id("selfterm")
    proc = containers.run(cid, "sh", "-c", "kill -TERM $$; echo survived", rm=True, check=False)
    assert (proc.returncode, proc.stdout) == (0, "survived\n")


def test_run_reports_signalled_init_as_128_plus_signal(containers: Containers) -> None:
    cid = containers.new_id("sigkill")
    attached = containers.popen(*containers.run_args(cid, "sleep", "1000", rm=True))
    containers.ctr.wait_status(cid, TaskStatus.RUNNING)
    containers.ctr("tasks", "kill", "-s", "SIGKILL", cid)
    _, err = attached.communicate(timeout=30)
    assert attached.returncode == 128 + signal.SIGKILL, err
    wait_until(lambda: cid not in containers.ctr.containers(), 10, message=f"--rm of {cid}")


def test_oom_kill_is_reported(containers: Containers) -> None:
    """A program over its memory limit is OOM-killed: exit 137 and a /tasks/oom event."""
    events = containers.popen("events")
    try:
        cid = containers.new_id("oom")
        proc = containers.run(
            cid,
            "/usr/bin/memfill",
            "64",
            "1",
            rm=True,
            check=False,
            extra=["--memory-limit", str(32 << 20)],
        )
        assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
        wait_until(lambda: cid not in containers.ctr.containers(), 10, message=f"--rm of {cid}")
    finally:
        events.kill()
        out, _ = events.communicate(timeout=10)
    oom = [line for line in out.splitlines() if "/tasks/oom" in line and f'"{cid}"' in line]
    assert len(oom) >= 1, out


def test_stdin_reaches_the_program(containers: Containers) -> None:
    # ctr 1.6 forwards stdin but does not close it at EOF: read one line, not to EOF
    cid = containers.new_id("stdin")
    proc = containers.run(
        cid, "sh", "-c", 'read line; echo "got:$line"', rm=True, input="data\n", timeout=30
    )
    assert proc.stdout == "got:data\n"


def test_run_with_terminal(containers: Containers) -> None:
    cid = containers.new_id("tty")
    term = containers.pty(*containers.run_args(cid, "sh", rm=True, tty=True))
    term.send("tty\n")
    term.expect(r"(?m)^/dev/pts/\d+\r*$")
    term.send("echo $((6*7))\n")
    term.expect(r"(?m)^42\r*$")
    term.send("exit 3\n")
    assert term.wait(30) == 3, term.output
    wait_until(lambda: cid not in containers.ctr.containers(), 10, message=f"--rm of {cid}")


# --- detached tasks ----------------------------------------------------------------------------


def test_detached_run_and_exec(containers: Containers) -> None:
    c = containers.start("exec", "sleep", "1000", log=False)
    task = containers.ctr.task(c.id)
    assert task is not None and task.status is TaskStatus.RUNNING
    assert proc_cmdline(task.pid) == ["sleep", "1000"]
    assert_served_by_runtime(containers, task.pid)
    assert container_processes(containers.ctr.namespace, c.id) == [task.pid]

    proc = containers.exec(c.id, "e1", "sh", "-c", "echo ex; exit 4", check=False)
    assert (proc.returncode, proc.stdout) == (4, "ex\n"), proc.stderr

    # an exec's stdin is forwarded too, and the exec id can be used again once it is gone
    proc = containers.exec(c.id, "e1", "sh", "-c", 'read l; echo "r:$l"', input="in\n")
    assert proc.stdout == "r:in\n"
    assert containers.ctr.task(c.id) == task  # the init is untouched


def test_exec_signalled_exit_is_128_plus_signal(containers: Containers) -> None:
    c = containers.start("execsig", "sleep", "1000", log=False)
    proc = containers.exec(c.id, "sig", "sh", "-c", "kill -TERM $$", check=False)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr


def test_exec_with_terminal(containers: Containers) -> None:
    c = containers.start("exectty", "sleep", "1000", log=False)
    term = containers.pty(*containers.exec_args(c.id, "t1", "sh", tty=True))
    term.send("tty\n")
    term.expect(r"(?m)^/dev/pts/\d+\r*$")
    term.send("echo $((6*7))\n")
    term.expect(r"(?m)^42\r*$")
    term.send("exit 2\n")
    assert term.wait(30) == 2, term.output


def test_ps_lists_init_and_exec(containers: Containers) -> None:
    c = containers.start("ps", "sleep", "1000", log=False)
    assert [(e.pid, e.exec_id) for e in containers.ctr.ps(c.id)] == [(c.pid, None)]

    containers.exec(c.id, "e3", "sleep", "300", detach=True)
    ns = containers.ctr.namespace

    def exec_pids() -> list[int]:
        return [p for p in container_processes(ns, c.id) if proc_cmdline(p) == ["sleep", "300"]]

    (epid,) = wait_until(exec_pids, 10, message="the exec's process")
    entries = {e.pid: e for e in containers.ctr.ps(c.id)}
    assert set(entries) == {c.pid, epid}
    assert entries[epid].exec_id == "e3"
    assert entries[c.pid].exec_id is None

    containers.ctr("tasks", "kill", "--exec-id", "e3", "-s", "SIGKILL", c.id)
    wait_until(lambda: [e.pid for e in containers.ctr.ps(c.id)] == [c.pid], 10, message="exec gone")
    assert not pid_alive(epid)


def test_metrics(containers: Containers) -> None:
    limit = 64 << 20
    c = containers.start(
        "metrics", "sleep", "1000", log=False, extra=("--memory-limit", str(limit))
    )
    metrics = containers.ctr.metrics(c.id)
    assert metrics.get("pids.current") == "1", metrics
    assert int(metrics["memory.usage_in_bytes"]) > 0, metrics
    assert int(metrics["memory.limit_in_bytes"]) == limit, metrics
    assert "cpuacct.usage" in metrics


def test_pause_freezes_and_resume_thaws(containers: Containers) -> None:
    c = containers.start("pause", "/usr/bin/counter", "20")
    wait_until(lambda: len(c.lines()) >= 3, 10, message="counter output")

    containers.ctr("tasks", "pause", c.id)
    assert containers.ctr.wait_status(c.id, TaskStatus.PAUSED).pid == c.pid
    assert freezer_state(c.pid) == "FROZEN"
    state = proc_state(c.pid)
    assert state is not None and state.startswith("D"), state  # frozen tasks show as D
    before = len(c.lines())
    time.sleep(0.6)  # observation window: ~30 lines if it were running
    assert len(c.lines()) - before <= 1, "a paused counter advanced"

    containers.ctr("tasks", "resume", c.id)
    containers.ctr.wait_status(c.id, TaskStatus.RUNNING)
    assert freezer_state(c.pid) == "THAWED"
    paused_at = len(c.lines())
    wait_until(lambda: len(c.lines()) >= paused_at + 5, 10, message="counter to advance again")

    containers.ctr("tasks", "kill", c.id)  # counter exits 0 on SIGTERM
    containers.ctr.wait_status(c.id, TaskStatus.STOPPED)
    assert containers.ctr.delete_task(c.id) == 0
    lines = c.lines()
    assert lines == [str(n) for n in range(1, len(lines) + 1)]  # nothing lost or repeated


def test_kill_delivers_sigterm_to_a_trap(containers: Containers) -> None:
    script = f'trap "echo got; exit 5" TERM; echo ready; {LOOP}'
    c = containers.start("trap", "sh", "-c", script)
    wait_until(lambda: "ready" in c.lines(), 10, message="trap installed")
    containers.ctr("tasks", "kill", c.id)
    containers.ctr.wait_status(c.id, TaskStatus.STOPPED)
    assert "got" in c.lines()
    assert containers.ctr.delete_task(c.id) == 5
    assert not pid_alive(c.pid)


def test_kill_all_reaches_every_process(containers: Containers) -> None:
    # init handles TERM (and lives on); its two children have the default action
    script = f'trap "echo term" TERM; sleep 1000 & sleep 1000 & echo ready; {LOOP}'
    c = containers.start("killall", "sh", "-c", script)
    ns = containers.ctr.namespace

    def sleepers() -> list[int]:
        return [p for p in container_processes(ns, c.id) if proc_cmdline(p) == ["sleep", "1000"]]

    wait_until(lambda: len(sleepers()) == 2, 10, message="two sleepers")
    children = sleepers()
    containers.ctr("tasks", "kill", "--all", "-s", "SIGTERM", c.id)
    wait_until(lambda: not any(pid_alive(p) for p in children), 10, message="children killed")
    wait_until(lambda: "term" in c.lines(), 10, message="init's TERM trap")
    assert pid_alive(c.pid)
    assert containers.ctr.wait_status(c.id, TaskStatus.RUNNING).pid == c.pid

    containers.ctr("tasks", "kill", "--all", "-s", "SIGKILL", c.id)
    containers.ctr.wait_status(c.id, TaskStatus.STOPPED)
    assert container_processes(ns, c.id) == []
    assert containers.ctr.delete_task(c.id) == 128 + signal.SIGKILL


def test_init_kill_without_an_own_pid_namespace_takes_its_children(
    containers: Containers,
) -> None:
    """A container without a PID namespace of its own (the host's, or here another
    container's, joined by path): its init's children do not die with it (the kernel kills a
    namespace's processes only when the namespace's init dies), so the shim kills every
    process of the container itself before it reports the init's exit."""
    holder = containers.start("pidns", "sleep", "1000", log=False)
    joined = ["--with-ns", f"pid:/proc/{holder.pid}/ns/pid"]
    c = containers.start("joinpid", "sh", "-c", f"sleep 1000 & echo ready; {LOOP}", extra=joined)
    ns = containers.ctr.namespace

    def sleepers() -> list[int]:
        return [p for p in container_processes(ns, c.id) if proc_cmdline(p) == ["sleep", "1000"]]

    wait_until(lambda: len(sleepers()) == 1, 10, message="the sleeping child")
    child = sleepers()[0]
    assert os.readlink(f"/proc/{child}/ns/pid") == os.readlink(f"/proc/{holder.pid}/ns/pid")
    containers.ctr("tasks", "kill", "-s", "SIGKILL", c.id)
    containers.ctr.wait_status(c.id, TaskStatus.STOPPED)
    wait_until(lambda: not pid_alive(child), 5, message="the child killed with the init")
    assert container_processes(ns, c.id) == []
    assert containers.ctr.delete_task(c.id) == 128 + signal.SIGKILL
    assert pid_alive(holder.pid)  # the namespace's own init is not the joiner's to kill


def test_delete_running_task_needs_force(containers: Containers, containerd: Containerd) -> None:
    c = containers.start("delete", "sleep", "1000", log=False)
    refused = containers.ctr("tasks", "rm", c.id, check=False)
    assert refused.returncode != 0
    assert containers.ctr.task(c.id) is not None
    assert pid_alive(c.pid)
    assert containers.ctr.delete_task(c.id, force=True) == 128 + signal.SIGKILL
    assert c.id not in containers.ctr.tasks()
    assert not pid_alive(c.pid)
    containers.ctr("containers", "rm", c.id)
    assert_gone(containerd, containers, c.id)


@pytest.mark.parametrize("code", [0, 9])
def test_program_exits_on_its_own(
    containers: Containers, containerd: Containerd, code: int
) -> None:
    cid = containers.new_id("exits")
    containers.run(cid, "/usr/bin/exitcode", str(code), detach=True, null_io=True)
    info = containers.ctr.wait_status(cid, TaskStatus.STOPPED)
    assert not pid_alive(info.pid)
    assert containers.ctr.delete_task(cid) == code
    containers.ctr("containers", "rm", cid)
    assert_gone(containerd, containers, cid)


# --- many at once ------------------------------------------------------------------------------


def test_twenty_containers_concurrently(containers: Containers, containerd: Containerd) -> None:
    ids = [containers.new_id(f"many{i:02d}") for i in range(20)]
    ctr = containers.ctr

    def start(cid: str) -> None:
        containers.run(cid, "sleep", "1000", detach=True, null_io=True, timeout=120)

    def stop(cid: str) -> int:
        status = ctr.delete_task(cid, force=True, timeout=120)
        ctr("containers", "rm", cid, timeout=120)
        return status

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        list(pool.map(start, ids))
        tasks = ctr.tasks()
        assert {cid: tasks[cid].status for cid in ids if cid in tasks} == dict.fromkeys(
            ids, TaskStatus.RUNNING
        )
        assert len({tasks[cid].pid for cid in ids}) == len(ids)
        statuses = list(pool.map(stop, ids))
    assert statuses == [128 + signal.SIGKILL] * len(ids)
    assert not set(ids) & set(ctr.tasks())
    assert not set(ids) & set(ctr.containers())
    for cid in ids:
        assert_gone(containerd, containers, cid)


# --- shim grouping -----------------------------------------------------------------------------


def test_grouped_containers_share_one_shim(containerd: Containerd, containers: Containers) -> None:
    """Containers with the same ``io.containerd.runc.v2.group`` annotation are served by one
    shim process (as CRI groups a pod's containers by sandbox id); it goes away with the last
    of them."""
    group = f"grp-{uuid.uuid4().hex[:8]}"
    annotation = ["--annotation", f"io.containerd.runc.v2.group={group}"]
    started = [
        containers.start("grouped", "sleep", "1000", log=False, extra=annotation) for _ in range(3)
    ]
    shims = {parent_pid(s.pid) for s in started}
    assert len(shims) == 1 and None not in shims, shims
    (shim,) = shims
    assert shim is not None
    for s in started[:-1]:
        containers.ctr("tasks", "kill", "-s", "SIGKILL", s.id)
        containers.ctr.wait_status(s.id, TaskStatus.STOPPED)
        containers.ctr.delete_task(s.id)
        assert pid_alive(shim)  # still serving the others
    assert containers.ctr.task(started[-1].id).status is TaskStatus.RUNNING
    containers.ctr("tasks", "kill", "-s", "SIGKILL", started[-1].id)
    containers.ctr.wait_status(started[-1].id, TaskStatus.STOPPED)
    containers.ctr.delete_task(started[-1].id)
    wait_until(lambda: not pid_alive(shim), 10, message="the group's shim to exit")


# --- containerd restarts -------------------------------------------------------------------------


def test_shim_survives_a_containerd_restart(containerd: Containerd, containers: Containers) -> None:
    """containerd restarts (upgrade, crash): it reconnects to the running shim through the
    bundle's ``address`` file, and the task stays usable: state, exec, kill, exit, delete."""
    started = containers.start("restart", "sleep", "1000", log=False)
    shim = parent_pid(started.pid)
    containerd.restart()
    assert containers.ctr.task(started.id).status is TaskStatus.RUNNING
    assert parent_pid(started.pid) == shim  # the same shim serves it
    out = containers.ctr("tasks", "exec", "--exec-id", "after", started.id, "echo", "alive")
    assert out.stdout == "alive\n"
    containers.ctr("tasks", "kill", "-s", "SIGKILL", started.id)
    containers.ctr.wait_status(started.id, TaskStatus.STOPPED)
    assert containers.ctr.delete_task(started.id) == 128 + signal.SIGKILL


# --- how pyrunc shims start ---------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["io.containerd.pyrunc.v2"], indirect=True, ids=["pyrunc"])
def test_pyrunc_shims_come_from_the_fork_server(containers: Containers) -> None:
    """With containerd in the host's namespaces, pyrunc's daemons are forked by the warm fork
    server (in a session of their own), not by ``start`` (which keeps containerd's session);
    they show the shim's argv and containerd's thread name, and live in containerd's
    namespaces."""
    started = [containers.start("fork", "sleep", "1000", log=False) for _ in range(2)]
    shims = {parent_pid(s.pid) for s in started}
    assert len(shims) == 2 and None not in shims
    # one fork server per place (namespaces and cgroups): exactly one serves this containerd's
    # (other containerds on the host, in other cgroups, may have their own)
    place = Path(f"/proc/{containers.containerd.pid}/cgroup").read_text()
    servers = [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if proc_cmdline(pid)[:2] == ["containerd-shim-pyrunc-v2", "forkserver"]
        and _read_or_empty(f"/proc/{pid}/cgroup") == place
    ]
    assert len(servers) == 1, servers
    containerd_session = session_of(containers.containerd.pid)
    for shim in shims:
        assert shim is not None
        # start keeps containerd's session for a daemon it forks; the fork server's daemons
        # are forked (or were forked ahead, as its spare) into a session of their own
        assert session_of(shim) != containerd_session, "the daemon was forked by start"
        argv = proc_cmdline(shim)
        assert argv[0].endswith("containerd-shim-pyrunc-v2") and "-id" in argv, argv
        assert Path(f"/proc/{shim}/comm").read_text().strip() == "containerd-shim"
        for ns in ("net", "mnt", "pid"):
            assert os.readlink(f"/proc/{shim}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}")
        # the ttrpc socket (fd 3) is close-on-exec: no child of the shim (runc, CRIU, a
        # helper) keeps it open, which would make containerd see a live shim after it exited
        flags = Path(f"/proc/{shim}/fdinfo/3").read_text().split("flags:")[1].split()[0]
        assert int(flags, 8) & 0o2000000, f"fd 3 of shim {shim} is inheritable"


def _read_or_empty(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""  # the process is gone


def session_of(pid: int) -> int:
    """The session id of ``pid`` (field 6 of ``/proc/<pid>/stat``)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


# --- a shim that dies ----------------------------------------------------------------------------


def test_containerd_cleans_up_after_shim_sigkill(
    containers: Containers, containerd: Containerd
) -> None:
    ns = containers.ctr.namespace
    c = containers.start("shimkill", "sleep", "1000", log=False)
    shim = parent_pid(c.pid)
    assert shim is not None
    assert_served_by_runtime(containers, c.pid)
    argv = proc_cmdline(shim)
    assert argv[argv.index("-id") + 1] == c.id, argv
    bundle = containerd.bundle(ns, c.id)
    assert os.readlink(f"/proc/{shim}/cwd") == str(bundle)
    sock = shim_socket_path(containerd.address, ns, c.id)
    assert (bundle / "address").read_text().strip() == f"unix://{sock}"
    before = containerd.leftovers(ns, c.id)  # the probes see the live container
    assert (before.processes, before.shims) == ((c.pid,), (shim,))
    assert before.mounts == (str(bundle / "rootfs"),)
    assert (before.bundle, before.live_socket) == (str(bundle), str(sock))

    os.kill(shim, signal.SIGKILL)

    # containerd notices, runs `<shim> delete` itself and forgets the task (runc shim: the
    # task disappears rather than showing STOPPED)
    wait_until(lambda: c.id not in containers.ctr.tasks(), 30, message="task to disappear")
    wait_until(lambda: not pid_alive(c.pid), 10, message="container init to be killed")
    containers.ctr("containers", "rm", c.id)
    assert not socket_is_live(sock)
    # the runc shim leaves its (dead) socket file behind; only a live one is a leak
    containerd.remove_stale_socket(ns, c.id)
    assert_gone(containerd, containers, c.id)
    assert re.search(
        rf"cleaning up after shim disconnected.*id={re.escape(c.id)}", containerd.log_tail(400)
    )
