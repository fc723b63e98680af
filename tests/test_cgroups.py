"""shim.cgroups: controller directories from /proc/<pid>/cgroup or the spec, freezer state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import shim.cgroups
from shim.cgroups import CGROUP_ROOT, FreezerState, controller_paths, freezer_state

NO_SUCH_PID = 2**22 + 1  # above the kernel's largest pid_max


def expected_from_proc_self() -> dict[str, Path]:
    """Our own parse of /proc/self/cgroup (v1 lines: id:controllers:path)."""
    paths: dict[str, Path] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        for controller in filter(None, controllers.split(",")):
            paths[controller] = Path("/sys/fs/cgroup", controller, rel.lstrip("/"))
    return paths


def test_controller_paths_of_a_live_process() -> None:
    expected = expected_from_proc_self()
    # The spec's path is not used while the process can be asked.
    assert controller_paths("/ignored/path", os.getpid()) == (expected or {})
    if not expected:
        pytest.skip("cgroup v2 host: no v1 controllers listed for this process")
    # The directories are the real ones: this process is listed in them.
    paths = controller_paths("", os.getpid())
    for controller in ("memory", "freezer", "pids"):
        procs = (paths[controller] / "cgroup.procs").read_text().split()
        assert str(os.getpid()) in procs, controller


def test_fallback_to_cgroups_path_when_the_process_is_gone() -> None:
    paths = controller_paths("/default/c1", NO_SUCH_PID)
    assert paths == {
        c: CGROUP_ROOT / c / "default" / "c1"
        for c in ("pids", "cpu", "cpuacct", "memory", "blkio", "hugetlb", "freezer")
    }
    assert controller_paths("default/c1", 0) == paths  # pid 0: no process to ask


def test_systemd_style_cgroups_path_is_not_guessed() -> None:
    assert controller_paths("system.slice:cri-containerd:abc", NO_SUCH_PID) == {}


def test_nothing_known() -> None:
    assert controller_paths("", NO_SUCH_PID) == {}
    assert controller_paths("", 0) == {}


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(shim.cgroups, "CGROUP_ROOT", tmp_path)
    return tmp_path


@pytest.mark.parametrize("state", list(FreezerState))
def test_freezer_state_parsed(fake_root: Path, state: FreezerState) -> None:
    freezer = fake_root / "freezer" / "default" / "c1"
    freezer.mkdir(parents=True)
    (freezer / "freezer.state").write_text(state.value + "\n")
    assert freezer_state("/default/c1", 0) is state


def test_freezer_state_missing_or_garbage(fake_root: Path) -> None:
    assert freezer_state("/default/c1", 0) is None  # no such cgroup
    freezer = fake_root / "freezer" / "default" / "c1"
    freezer.mkdir(parents=True)
    assert freezer_state("/default/c1", 0) is None  # no state file
    (freezer / "freezer.state").write_text("MELTED\n")
    assert freezer_state("/default/c1", 0) is None
    assert freezer_state("", 0) is None  # no freezer path known at all
