"""Integration harness: an isolated containerd, ``ctr`` helpers, polling waits, leak probes.

Strategy: the tests drive containerd exactly as users do, with the ``ctr`` binary. This package
owns everything that touches the host for them, one module per concern (``_common``: constants,
errors, :func:`wait_until`; ``procs``; ``mounts``; ``ctr``; ``pty``; ``containerd``;
``containers``; ``pyrunc``), and re-exports their public names here:

* :class:`Containerd` - a private containerd daemon (``Containerd.start()`` is the factory)
  with ``root``, ``state`` and both sockets in a short temporary directory under ``/run``
  (unix socket paths must stay under 108 bytes). It never touches the system containerd.
  ``stop()`` tears it down completely: tasks and containers in every namespace, the daemon
  (SIGTERM by pid, then SIGKILL), stray shims of this daemon (by pid), every mount under its
  directory (deepest first, lazily when busy), stale shim sockets, and the directory.
* :class:`Ctr` - ``ctr --address <sock> -n <namespace> ...`` with captured output, plus
  parsers for ``ctr t ls``/``ps``/``metrics`` and a pseudo-terminal runner (:class:`PtySession`).
* :class:`Containers` - the containers one test creates with one runtime; ``cleanup()`` removes
  all of them (and kills the ``ctr`` processes the test left running), even after a failure.
* :func:`wait_until` - poll a predicate with a timeout; tests never sleep to synchronise.
* Probes of ``/proc`` and ``/proc/self/mountinfo``: task pids, process state, cgroup v1
  freezer state, a container's processes, its shim, mounts and shim socket
  (:meth:`Containerd.leftovers`).

Facts this relies on (containerd 1.6, checked against ``io.containerd.runc.v2``): shims are
started with cwd = bundle = ``<state>/io.containerd.runtime.v2.task/<ns>/<id>``, with
``-namespace <ns> -id <id> -address <grpc socket>`` on their command line; their socket is
``/run/containerd/s/<sha256 of "<grpc socket>/<ns>/<id>">`` whatever the daemon's state dir
is; ``ctr run`` puts a container in the cgroup ``/<ns>/<id>``; ``ctr t rm`` reports a non-zero
exit status only as a warning on stderr.
"""

from __future__ import annotations

from shim.state import TaskStatus
from shim.warm import socket_is_live  # (the shim's one rule, re-exported for the tests)

from ._common import (
    BUILD_SCRIPT,
    IMAGE_REF,
    IMAGE_TAR,
    NAMESPACE,
    PYRUNC,
    REPO,
    RUNC,
    RUNTIMES,
    CtrError,
    HarnessError,
    WaitTimeout,
    free_port,
    wait_until,
)
from .containerd import (
    Containerd,
    Leftovers,
    containerd_environment,
    private_config,
    remove_container,
    scratch_tmp,
    wait_for_containerd,
)
from .containers import (
    Containers,
    Started,
    ensure_image_tar,
)
from .ctr import (
    Ctr,
    PsEntry,
    TaskInfo,
)
from .mounts import (
    mounts_under,
    unmount_all_under,
)
from .procs import (
    container_processes,
    freezer_state,
    kill_stray_shims,
    parent_pid,
    pid_alive,
    proc_cmdline,
    proc_state,
    shim_binary,
    shim_processes,
    shim_socket_path,
    stop_daemon,
    unix_socket_paths,
)
from .pty import (
    PtySession,
)
from .pyrunc import (
    pyrunc_argv,
    pyrunc_env,
    run_pyrunc,
)

__all__ = [
    "BUILD_SCRIPT",
    "IMAGE_REF",
    "IMAGE_TAR",
    "NAMESPACE",
    "PYRUNC",
    "REPO",
    "RUNC",
    "RUNTIMES",
    "Containerd",
    "Containers",
    "Ctr",
    "CtrError",
    "HarnessError",
    "Leftovers",
    "PsEntry",
    "PtySession",
    "Started",
    "TaskInfo",
    "TaskStatus",
    "WaitTimeout",
    "container_processes",
    "containerd_environment",
    "ensure_image_tar",
    "free_port",
    "freezer_state",
    "kill_stray_shims",
    "mounts_under",
    "parent_pid",
    "pid_alive",
    "private_config",
    "proc_cmdline",
    "proc_state",
    "pyrunc_argv",
    "pyrunc_env",
    "remove_container",
    "run_pyrunc",
    "scratch_tmp",
    "shim_binary",
    "shim_processes",
    "shim_socket_path",
    "socket_is_live",
    "stop_daemon",
    "unix_socket_paths",
    "unmount_all_under",
    "wait_for_containerd",
    "wait_until",
]
