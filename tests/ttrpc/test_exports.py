"""The package's surface and house rules: __all__, sans-IO imports, value types."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib

import pytest

import shim.ttrpc

PACKAGE = pathlib.Path(shim.ttrpc.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("_*.py") if p.stem != "__init__")
IO_MODULES = {"_server", "_client"}
IO_IMPORTS = {"asyncio", "socket", "os", "time", "selectors", "threading"}


def test_public_names_resolve() -> None:
    for name in shim.ttrpc.__all__:
        assert getattr(shim.ttrpc, name) is not None, name
    assert len(set(shim.ttrpc.__all__)) == len(shim.ttrpc.__all__)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_declares_all_and_a_strategy(module: str) -> None:
    mod = importlib.import_module(f"shim.ttrpc.{module}")
    assert isinstance(mod.__all__, list)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"
    source = (PACKAGE / f"{module}.py").read_text()
    assert source.startswith("# Strategy:"), module


@pytest.mark.parametrize("module", sorted(set(MODULES) - IO_MODULES))
def test_protocol_modules_do_no_io(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_IMPORTS, f"{module} imports {imported & IO_IMPORTS}"


@pytest.mark.parametrize(
    "cls",
    [
        shim.ttrpc.Request,
        shim.ttrpc.Response,
        shim.ttrpc.Status,
        shim.ttrpc.RequestReceived,
        shim.ttrpc.ResponseReceived,
        shim.ttrpc.StreamRejected,
        shim.ttrpc.ConnectionClosed,
        shim.ttrpc.RequestContext,
    ],
)
def test_values_are_frozen_slotted_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in cls.__dict__


def test_error_hierarchy() -> None:
    t = shim.ttrpc
    assert issubclass(t.LocalProtocolError, t.ProtocolError)
    assert issubclass(t.RemoteProtocolError, t.ProtocolError)
    assert issubclass(t.DecodeError, t.RemoteProtocolError)
    assert issubclass(t.MessageTooLargeError, t.LocalProtocolError)
    assert issubclass(t.ClosedError, t.TtrpcError)
    assert not issubclass(t.TtrpcError, t.ProtocolError)
    assert len(t.Code) == 17
