"""``pyrunc cri serve``: the command value, its parser, and running it.

Strategy: the parser and the frozen :class:`CriServeCommand` live here so ``_args`` needs one
line per hook; :func:`run_cri` imports :mod:`shim.cri` (grpc) only when the command runs
(start-up time of every other command stays as it is).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Final

from shim.warm import RUN_DIR

__all__ = [
    "DEFAULT_CRI_CONTAINERD",
    "DEFAULT_CRI_LISTEN",
    "DEFAULT_CRI_WORK_DIR",
    "CheckpointImageCommand",
    "CriServeCommand",
    "add_checkpoint_image_parser",
    "add_cri_parser",
    "checkpoint_image_command",
    "cri_command",
    "run_checkpoint_image",
    "run_cri",
]

DEFAULT_CRI_LISTEN: Final = f"unix://{RUN_DIR}/cri.sock"
DEFAULT_CRI_CONTAINERD: Final = "unix:///run/containerd/containerd.sock"
DEFAULT_CRI_WORK_DIR: Final = "/var/lib/containerd-shim-pyrunc/cri"


@dataclass(frozen=True, slots=True)
class CriServeCommand:
    """``pyrunc cri serve``."""

    listen: str = DEFAULT_CRI_LISTEN
    containerd: str = DEFAULT_CRI_CONTAINERD
    namespace: str = "k8s.io"
    work_dir: str = DEFAULT_CRI_WORK_DIR
    criu: str = "criu"
    verbose: bool = False


def _unix_uri(value: str) -> str:
    if value.startswith("/"):
        return f"unix://{value}"
    if not value.startswith("unix:///"):
        raise argparse.ArgumentTypeError(f"{value!r} is not unix:///PATH or /PATH")
    return value


def add_cri_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cri serve`` to the ``pyrunc`` subcommands."""
    p = sub.add_parser(
        "cri", help="the Kubernetes CRI endpoint (kubelet's --container-runtime-endpoint)",
        description="The CRI endpoint: CheckpointContainer is done here (kubelet-format "
        "archives through containerd's API, on containerd 1.6, 1.7 and 2.x); every other CRI "
        "call is forwarded to containerd's CRI unchanged.")
    cri = p.add_subparsers(dest="cri_command", metavar="COMMAND", required=True)
    s = cri.add_parser("serve", help="serve CRI until SIGTERM/SIGINT")
    s.add_argument("--listen", type=_unix_uri, default=DEFAULT_CRI_LISTEN, metavar="URI",
                   help=f"socket to serve on (default: {DEFAULT_CRI_LISTEN})")
    s.add_argument("--containerd", type=_unix_uri, default=DEFAULT_CRI_CONTAINERD,
                   metavar="URI", help="containerd's gRPC socket, where its CRI is served "
                   f"(default: {DEFAULT_CRI_CONTAINERD})")
    s.add_argument("--cri-namespace", default="k8s.io", metavar="NS",
                   help="containerd namespace of CRI's containers (default: k8s.io)")
    s.add_argument("--work-dir", default=DEFAULT_CRI_WORK_DIR, metavar="DIR",
                   help=f"where checkpoints are staged (default: {DEFAULT_CRI_WORK_DIR})")
    s.add_argument("--criu", default="criu", metavar="PATH",
                   help="the CRIU checked for before a checkpoint (default: criu on PATH)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every refused call")


def cri_command(ns: argparse.Namespace) -> CriServeCommand:
    """The command value of parsed ``cri serve`` arguments."""
    return CriServeCommand(listen=ns.listen, containerd=ns.containerd,
                           namespace=ns.cri_namespace, work_dir=ns.work_dir, criu=ns.criu,
                           verbose=ns.verbose)


def run_cri(cmd: CriServeCommand) -> int:
    """Serve until SIGTERM/SIGINT."""
    from pathlib import Path

    from shim.cri import ServeConfig, serve  # grpc: loaded only for this command

    logging.basicConfig(level=logging.INFO if cmd.verbose else logging.WARNING,
                        format="pyrunc cri: %(levelname)s %(message)s")
    try:
        return serve(ServeConfig(listen=cmd.listen, containerd=cmd.containerd,
                                 namespace=cmd.namespace, work_dir=Path(cmd.work_dir),
                                 criu=cmd.criu))
    except OSError as exc:
        print(f"pyrunc cri serve: {exc.strerror or exc}", file=sys.stderr)
        return 1


# --- pyrunc checkpoint-image build -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointImageCommand:
    """``pyrunc checkpoint-image build ARCHIVE REF [--import | --output FILE]``."""

    archive: str
    ref: str
    output: str = ""  # an OCI layout tar to write; "" = import into containerd
    address: str = DEFAULT_CRI_CONTAINERD
    namespace: str = "k8s.io"
    ctr: str = "ctr"


def add_checkpoint_image_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``checkpoint-image build`` to the ``pyrunc`` subcommands."""
    p = sub.add_parser(
        "checkpoint-image", help="build a checkpoint OCI image from a checkpoint archive",
        description="Checkpoint OCI images (Kubernetes' restore from an image).")
    images = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    b = images.add_parser(
        "build", help="an OCI image holding ARCHIVE, annotated as a checkpoint",
        description="Build an OCI image whose one layer is the checkpoint archive ARCHIVE, its "
        "index and manifest annotated with org.criu.checkpoint.* and CRI-O's "
        "io.kubernetes.cri-o.annotations.checkpoint.name; import it into containerd's CRI "
        "namespace (--import, the default) or write it as an OCI layout tar (--output).")
    b.add_argument("archive", metavar="ARCHIVE", help="a checkpoint archive (kubelet's .tar)")
    b.add_argument("ref", metavar="REF", help="the image's name[:tag], e.g. localhost/ck:1")
    to = b.add_mutually_exclusive_group()
    to.add_argument("--import", dest="do_import", action="store_true",
                    help="import into containerd (the default)")
    to.add_argument("--output", "-o", metavar="FILE", default="",
                    help="write an OCI layout tar instead")
    b.add_argument("--containerd", type=_unix_uri, default=DEFAULT_CRI_CONTAINERD,
                   metavar="URI", help=f"containerd's socket (default: {DEFAULT_CRI_CONTAINERD})")
    b.add_argument("--cri-namespace", default="k8s.io", metavar="NS",
                   help="containerd namespace to import into (default: k8s.io)")
    b.add_argument("--ctr", default="ctr", metavar="PATH",
                   help="the ctr binary that imports (default: ctr on PATH)")


def checkpoint_image_command(ns: argparse.Namespace, cwd: str) -> CheckpointImageCommand:
    """The command value of parsed ``checkpoint-image build`` arguments (paths absolute)."""
    import os

    output = os.path.normpath(os.path.join(cwd, ns.output)) if ns.output else ""
    return CheckpointImageCommand(archive=os.path.normpath(os.path.join(cwd, ns.archive)),
                                  ref=ns.ref, output=output, address=ns.containerd,
                                  namespace=ns.cri_namespace, ctr=ns.ctr)


def run_checkpoint_image(cmd: CheckpointImageCommand) -> int:
    """Build (and import); prints ``REF@DIGEST``."""
    from pathlib import Path

    from shim.cri import CriError, build_layout, import_layout, temporary_layout  # loads grpc

    try:
        if cmd.output:
            built = build_layout(Path(cmd.archive), cmd.ref, Path(cmd.output))
        else:
            layout = temporary_layout()
            try:
                built = build_layout(Path(cmd.archive), cmd.ref, layout)
                import_layout(layout, cmd.address, cmd.namespace, cmd.ctr)
            finally:
                layout.unlink(missing_ok=True)
    except (CriError, OSError) as exc:
        print(f"pyrunc checkpoint-image build: {exc}", file=sys.stderr)
        return 1
    print(f"{built.ref}@{built.digest}")
    return 0
