"""The shim binary's command line: Go ``flag`` syntax parsed into one :class:`Flags` value.

Strategy: mirrors the flags of containerd ``runtime/v2/shim/shim.go``: one or two dashes,
``-x v`` or ``-x=v``, booleans only as ``-x`` or ``-x=true``; flags end at the first positional
argument (the action). Its own module so that what runs a daemon (the fork server, the daemon
itself) never imports the entry point. No dataclasses: ``start`` imports this module.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ADDRESS", "Flags", "UsageError", "parse_flags"]

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"


class UsageError(Exception):
    """Bad command-line arguments."""


class Flags:
    """The parsed command line: a value, built once by :func:`parse_flags`.

    A plain slotted class rather than a dataclass: ``start`` and ``delete`` are on the
    critical path of every ``ctr run`` and must not pay for importing dataclasses/inspect.
    """

    __slots__ = (
        "action", "address", "bundle", "debug", "id", "namespace", "publish_binary", "socket",
        "version",
    )

    def __init__(
        self,
        *,
        namespace: str = "",
        id: str = "",
        address: str = DEFAULT_ADDRESS,
        publish_binary: str = "containerd",
        bundle: str = "",
        socket: str = "",
        debug: bool = False,
        version: bool = False,
        action: str = "",
    ) -> None:
        self.namespace = namespace
        self.id = id
        self.address = address
        self.publish_binary = publish_binary
        self.bundle = bundle
        self.socket = socket
        self.debug = debug
        self.version = version
        self.action = action

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Flags) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"Flags({fields})"


_STRING_FLAGS = {
    "namespace": "namespace",
    "id": "id",
    "address": "address",
    "publish-binary": "publish_binary",
    "bundle": "bundle",
    "socket": "socket",
}
_BOOL_FLAGS = {"debug": "debug", "v": "version"}
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def parse_flags(args: list[str]) -> Flags:
    """Parse Go ``flag``-style arguments.

    Raises:
        UsageError: an unknown flag, a missing value or a bad boolean.
    """
    values: dict[str, str] = {}
    bools: dict[str, bool] = {}
    i = 0
    action = ""
    while i < len(args):
        arg = args[i]
        if arg == "--":
            action = args[i + 1] if i + 1 < len(args) else ""
            break
        if not arg.startswith("-") or arg == "-":
            action = arg
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            if eq and value not in _TRUE + _FALSE:
                raise UsageError(f"invalid boolean value {value!r} for -{name}")
            bools[_BOOL_FLAGS[name]] = not eq or value in _TRUE
        elif name in _STRING_FLAGS:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args[i]
            values[_STRING_FLAGS[name]] = value
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    return Flags(
        namespace=values.get("namespace", ""),
        id=values.get("id", ""),
        address=values.get("address", DEFAULT_ADDRESS),
        publish_binary=values.get("publish_binary", "containerd"),
        bundle=values.get("bundle", ""),
        socket=values.get("socket", ""),
        debug=bools.get("debug", False),
        version=bools.get("version", False),
        action=action,
    )
