"""Fixtures shared by the CRI endpoint's unit tests."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest


@pytest.fixture
def held_unpacking(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the thread that writes CRIU's images (the part of an unpacking that goes on past
    CreateContainer's answer) until the returned event is set; the rest is written as usual."""
    from shim.cri import _extract

    release = threading.Event()
    real = _extract._write_members

    def held(archive: object, dest: Path, members: object, stop: object = None) -> None:
        if stop is not None:  # the thread's part: CRIU's images
            assert release.wait(10)
        real(archive, dest, members, stop)  # type: ignore[arg-type]

    monkeypatch.setattr(_extract, "_write_members", held)
    return release
