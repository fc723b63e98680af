"""Where a container's cgroup v1 controllers are, and the freezer's state.

Strategy: a process's cgroups are read from ``/proc/<pid>/cgroup`` (so systemd-style and
cgroupfs paths both work), falling back to the spec's ``cgroupsPath`` under each controller's
mount in ``/sys/fs/cgroup`` once the process is gone.
"""

from __future__ import annotations

import enum
from pathlib import Path

__all__ = ["CGROUP_ROOT", "FreezerState", "controller_paths", "freezer_state"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_CONTROLLERS = ("pids", "cpu", "cpuacct", "memory", "blkio", "hugetlb", "freezer")


class FreezerState(enum.Enum):
    THAWED = "THAWED"
    FREEZING = "FREEZING"
    FROZEN = "FROZEN"


def controller_paths(cgroups_path: str, pid: int) -> dict[str, Path]:
    """Each controller's directory for the container (empty if nothing is known)."""
    paths: dict[str, Path] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines() if pid else []
    except OSError:
        lines = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        for controller in controllers.split(","):
            if controller:
                paths[controller] = CGROUP_ROOT / controller / rel.lstrip("/")
    if not paths and cgroups_path and cgroups_path.count(":") != 2:  # not systemd-style
        for controller in _CONTROLLERS:
            paths[controller] = CGROUP_ROOT / controller / cgroups_path.lstrip("/")
    return paths


def freezer_state(cgroups_path: str, pid: int) -> FreezerState | None:
    """The container's freezer state, or None if its freezer cgroup is not there."""
    freezer = controller_paths(cgroups_path, pid).get("freezer")
    if freezer is None:
        return None
    try:
        return FreezerState((freezer / "freezer.state").read_text().strip())
    except (OSError, ValueError):
        return None
