"""shim.cleanup.discard_unfinished_dump: what a dump its shim died in wrote goes at delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.bundle import UNFINISHED_DUMP
from shim.checkpoint.plan import STORED_PLAN
from shim.cleanup import discard_unfinished_dump


def _mark(bundle: Path, images: Path, how: str) -> None:
    (bundle / UNFINISHED_DUMP).write_text(f"{images}\n{how}\n{images / STORED_PLAN}\n")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    bundle, images = tmp_path / "bundle", tmp_path / "images"
    bundle.mkdir()
    images.mkdir()
    (images / "pages-1.img").write_bytes(b"x" * 100)
    (images / "sub").mkdir()
    return bundle, images


def test_a_created_images_dir_is_removed(dirs: tuple[Path, Path]) -> None:
    bundle, images = dirs
    _mark(bundle, images, "created")
    discard_unfinished_dump(str(bundle))
    assert not images.exists() and not (bundle / UNFINISHED_DUMP).exists()


def test_a_kept_images_dir_is_emptied(dirs: tuple[Path, Path]) -> None:
    bundle, images = dirs
    _mark(bundle, images, "kept")
    discard_unfinished_dump(str(bundle))
    assert images.is_dir() and list(images.iterdir()) == []


def test_a_complete_dump_is_kept(dirs: tuple[Path, Path]) -> None:
    bundle, images = dirs
    (images / STORED_PLAN).write_text("{}")
    _mark(bundle, images, "created")
    discard_unfinished_dump(str(bundle))
    assert (images / "pages-1.img").exists() and not (bundle / UNFINISHED_DUMP).exists()


def test_a_marker_naming_another_file_is_ignored(dirs: tuple[Path, Path]) -> None:
    bundle, images = dirs
    (bundle / UNFINISHED_DUMP).write_text(f"{images}\ncreated\n/elsewhere/{STORED_PLAN}\n")
    discard_unfinished_dump(str(bundle))
    assert (images / "pages-1.img").exists()


def test_no_marker_changes_nothing(dirs: tuple[Path, Path]) -> None:
    bundle, images = dirs
    discard_unfinished_dump(str(bundle))
    assert (images / "pages-1.img").exists()


def test_delete_imports_nothing_heavy(tmp_path: Path) -> None:
    """``delete`` runs after every task delete (``ctr run --rm``'s critical path): importing
    shim.cleanup and cleaning up a finished bundle (its socket gone, the runtime ``true``) in
    a bare interpreter (``-S``, as the binary runs) loads none of json, re, pathlib, typing,
    shutil, socket or contextlib (together ~12 ms of that process's start-up), nor shim.warm
    (the liveness probe of a socket that is still there, ~0.6 ms)."""
    import subprocess
    import sys

    (tmp_path / "address").write_text(f"unix://{tmp_path / 'gone.sock'}\n")
    (tmp_path / "runtime-options").write_text("binary=true\n")
    heavy = ("json", "re", "pathlib", "typing", "shutil", "socket", "contextlib", "shim.warm")
    root = Path(__file__).resolve().parent.parent
    code = (
        f"import sys; sys.path.insert(0, {str(root)!r}); import shim.cleanup; "
        f"shim.cleanup.cleanup({str(tmp_path)!r}, 'ns', 'c1'); "
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


@pytest.mark.parametrize("state", [True, False])
def test_runc_delete_runs_only_when_runc_has_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: bool
) -> None:
    """runc keeps all it knows of a container in <root>/<namespace>/<id>: without it
    (deleted by the daemon already), the delete action spawns no ``runc delete``."""
    import shim.cleanup

    root = tmp_path / "runc"
    if state:
        (root / "ns" / "c1").mkdir(parents=True)
    (tmp_path / "runtime-options").write_text(f"root={root}\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(shim.cleanup, "_runtime_delete", ran.append)
    shim.cleanup.cleanup(str(tmp_path), "ns", "c1")
    assert ran == ([["runc", "--root", str(root / "ns"), "delete", "--force", "c1"]]
                   if state else [])


def test_the_shim_socket_is_removed_only_when_dead(tmp_path: Path) -> None:
    """A shim killed leaves its socket file: delete removes it, unless a server still
    listens there (:func:`shim.warm.socket_is_live`)."""
    import socket

    import shim.cleanup

    path = tmp_path / "s.sock"
    (tmp_path / "address").write_text(f"unix://{path}\n")
    (tmp_path / "runtime-options").write_text("binary=true\n")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        shim.cleanup.cleanup(str(tmp_path), "ns", "c1")
        assert path.is_socket()  # live: kept
    shim.cleanup.cleanup(str(tmp_path), "ns", "c1")
    assert not path.exists()  # dead: removed
    shim.cleanup.cleanup(str(tmp_path), "ns", "c1")  # and gone: nothing to do
