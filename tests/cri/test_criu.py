"""shim.cri._criu: CRIU present and >= 3.16, else kubelet's "unsupported" text."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.cri._criu import check_criu, criu_version
from shim.cri._errors import CRIU_UNSUPPORTED, Unsupported


def _fake(tmp: Path, text: str) -> str:
    path = tmp / "criu"
    path.write_text(f"#!/bin/sh\nprintf '{text}'\n")
    path.chmod(0o755)
    return str(path)


def test_version_parsed(tmp_path: Path) -> None:
    assert criu_version(_fake(tmp_path, "Version: 4.2.1\\n")) == 40201


def test_too_old(tmp_path: Path) -> None:
    with pytest.raises(Unsupported) as info:
        check_criu(_fake(tmp_path, "Version: 3.15\\n"))
    assert str(info.value).startswith(CRIU_UNSUPPORTED)


def test_missing() -> None:
    with pytest.raises(Unsupported, match="not found"):
        check_criu("/nonexistent/criu")
