"""containerd-shim-pyrunc: a containerd runtime shim (v2) built for CRIU checkpoint/restore."""

__version__ = "0.1.0"
