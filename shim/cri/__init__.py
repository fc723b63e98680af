"""The Kubernetes-facing CRI endpoint (``pyrunc cri serve``; grpcio).

kubelet points ``--container-runtime-endpoint`` at it. It implements CheckpointContainer
itself (:mod:`._checkpoint`: kubelet-format archives through containerd's gRPC API, the same on
containerd 1.6, 1.7 and 2.x) and forwards every other RuntimeService and ImageService call to
containerd's CRI unchanged (:mod:`._proxy`). Modules: ``_server`` (the grpc server, errors
mapped to status codes), ``_proxy``, ``_checkpoint``, ``_archive`` (the tar), ``_dumps`` (its
JSON documents), ``_options`` (pod annotations -> checkpoint options), ``_containerd`` (the
calls to containerd), ``_criu`` (CRIU present and new enough), ``_errors``.

Imports grpc: only the ``pyrunc`` tool loads this package, never the shim daemon.
"""

from ._build import BuiltImage, build_layout, import_layout, temporary_layout
from ._errors import CRIU_UNSUPPORTED, CriError
from ._server import ServeConfig, serve

__all__ = ["CRIU_UNSUPPORTED", "BuiltImage", "CriError", "ServeConfig", "build_layout",
           "import_layout", "serve", "temporary_layout"]
