"""What CRIU's log says went wrong: the one place CRIU's log text is read."""

from __future__ import annotations

import re

__all__ = [
    "log_reason",
]


_LOG_ERROR = re.compile(r"^(?:\([0-9.]+\)\s+)?(?:[0-9]+: )?Error \([^)]*\): (.*)$")
# Error lines that say nothing about the cause: CRIU's closing summaries, what failed because
# of an earlier error, and a harmless one of hosts where root lacks CAP_SYS_RESOURCE.
_CONSEQUENCES = re.compile(
    r"^(?:Dumping FAILED\.|Restoring FAILED\.|Dump files \(pid: [0-9]+\) failed with -1"
    r"|Unable to open fd=|cg: cgroupd: recv req error|rlimit: Can't setup RLIMIT_NOFILE)"
)


def log_reason(text: str, *, limit: int = 2) -> str:
    """CRIU's own words for why a dump or restore failed, for an error message.

    Returns:
        The first ``limit`` ``Error`` lines of the log that are not consequences or summaries
        (see ``_CONSEQUENCES``), without timestamp, pid and source location, joined by
        ``"; "``; "" if there is none.
    """
    found: list[str] = []
    for line in text.splitlines():
        m = _LOG_ERROR.match(line.strip())
        if m and m.group(1) and not _CONSEQUENCES.match(m.group(1)):
            found.append(m.group(1).strip())
            if len(found) == limit:
                break
    return "; ".join(found)
