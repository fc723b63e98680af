"""``pyrunc``: the project's command-line tool for containerd's gRPC API.

It reaches every checkpoint/restore option of the io.containerd.pyrunc.v2 shim, which
``ctr`` cannot: ``ctr t checkpoint`` forwards options only to runc's runtimes and knows
nothing of ``pyrunc.v1.CheckpointOptions``/``RestoreOptions``.

    pyrunc [-a ADDRESS] [-n NAMESPACE] checkpoint ID [options]   Tasks/Checkpoint
    pyrunc [-a ADDRESS] [-n NAMESPACE] restore ID --image-path DIR [options]
                                       Containers/Get, Snapshots/Mounts, Tasks/Create+Start
    pyrunc [-a ADDRESS] [-n NAMESPACE] tasks [-q]                 Tasks/List

Modules: ``_args`` (argv -> frozen command values), ``_options`` (commands -> protobuf
options), ``_client`` (the only grpc user), ``_commands`` (what each command calls),
``_main`` (entry point, error reporting), ``_errors``. The shim daemon never imports this
package.
"""

from __future__ import annotations

import sys

from ._main import main as _main

__all__ = ["main"]


def main() -> None:
    """Console script ``pyrunc`` (``shim.ctl:main``): exits with the command's status."""
    sys.exit(_main())
