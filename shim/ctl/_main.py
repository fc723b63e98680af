"""``pyrunc`` entry point: parse, connect, run one command, report errors on one line.

Strategy: exit statuses are 0 (done), 1 (containerd or the shim refused, or containerd
cannot be reached: ``pyrunc: <message>`` on stderr, no traceback), 2 (usage error, from
argparse), 130 (interrupted), or, for ``restore`` without ``--detach``, the task's exit
status. grpc is imported only once a command runs, so ``--help`` and usage errors work
without the ``grpc`` extra, and a missing grpcio is reported as such.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._args import CheckpointCommand, Command, RestoreCommand, TasksCommand, parse_args
from ._cri import CheckpointImageCommand, CriServeCommand, run_checkpoint_image, run_cri
from ._errors import CtlError
from ._migrate import AgentCommand, MigrateCommand, run_migrate

__all__ = ["main", "run"]


def run(cmd: Command) -> int:
    """Run ``cmd`` against containerd; returns the exit status.

    Raises:
        CtlError: a call failed.
        ImportError: grpcio is not installed.
    """
    if isinstance(cmd, CriServeCommand):
        return run_cri(cmd)
    if isinstance(cmd, (MigrateCommand, AgentCommand)):
        return run_migrate(cmd)
    if isinstance(cmd, CheckpointImageCommand):
        return run_checkpoint_image(cmd)
    from ._client import connect
    from ._commands import run_checkpoint, run_restore, run_tasks

    with connect(cmd.globals.address, cmd.globals.namespace) as api:
        if isinstance(cmd, CheckpointCommand):
            return run_checkpoint(cmd, api, sys.stdout)
        if isinstance(cmd, RestoreCommand):
            return run_restore(cmd, api, sys.stdout)
        if isinstance(cmd, TasksCommand):
            return run_tasks(cmd, api, sys.stdout)
    raise AssertionError(f"unhandled command {cmd!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pyrunc`` console script; also callable with an argv (returns the status)."""
    cmd = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(cmd)
    except CtlError as exc:
        print(f"pyrunc: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "grpc":
            print("pyrunc: needs grpcio (install containerd-shim-pyrunc[grpc])", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        if isinstance(cmd, RestoreCommand) and not cmd.detach:
            print(f"pyrunc: interrupted; task {cmd.container_id} may still be running "
                  "(ctr t kill / ctr t rm)", file=sys.stderr)
        else:
            print("pyrunc: interrupted", file=sys.stderr)
        return 130
