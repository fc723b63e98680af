"""``log_reason``: CRIU's own words for a failed dump or restore, from real CRIU 4.1.1/4.2 logs.

The lines are copied from logs written on this project's test host (Linux 6.18, runc 1.1.5).
"""

from __future__ import annotations

import pytest

from shim.checkpoint.criu import log_reason

RLIMIT = ("(00.034406) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: "
          "Operation not permitted")

CASES = [
    (  # a dump of an established TCP connection without --tcp-established
        [RLIMIT,
         "(00.041470) inet: \tDumping: ino  0x59441 family AF_INET    type SOCK_STREAM",
         "(00.041478) Error (criu/sk-inet.c:191): inet: Connected TCP socket, consider using "
         "--tcp-established option.",
         "(00.041489) Error (criu/cr-dump.c:1681): Dump files (pid: 10979) failed with -1",
         "(00.112631) Error (criu/cr-dump.c:2111): Dumping FAILED."],
        "inet: Connected TCP socket, consider using --tcp-established option.",
    ),
    (  # CRIU 4.1.1 on Linux >= 6.16 (fixed in CRIU 4.2)
        [RLIMIT,
         "(00.133302) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not "
         "supported",
         "(00.133304) Error (criu/sockets.c:628): sockets: Can't get 1:34 opt: Operation not "
         "supported",
         "(00.133315) Error (criu/cr-dump.c:1681): Dump files (pid: 10979) failed with -1"],
        "sockets: Can't get 1:16 opt: Operation not supported; "
        "sockets: Can't get 1:34 opt: Operation not supported",
    ),
    (  # restore errors of the restored task carry its pid
        [RLIMIT,
         "(00.121764)      1: Error (soccr/soccr.c:529): Can't connect inet socket back: "
         "Network is unreachable",
         "(00.121775)      1: Error (criu/files.c:1221): Unable to open fd=4 id=0x5",
         "(00.127264) Error (criu/cr-restore.c:2324): Restoring FAILED.",
         "(00.129081) Error (criu/cgroup.c:1998): cg: cgroupd: recv req error: No such file or "
         "directory"],
        "Can't connect inet socket back: Network is unreachable",
    ),
    (  # a log without timestamps
        ["Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! You can try "
         "--file-locks to dump them."],
        "Some file locks are hold by dumping tasks! You can try --file-locks to dump them.",
    ),
]


@pytest.mark.parametrize(("lines", "reason"), CASES)
def test_reason(lines: list[str], reason: str) -> None:
    assert log_reason("\n".join(lines) + "\n") == reason


def test_no_reason() -> None:
    assert log_reason("") == ""
    assert log_reason(RLIMIT + "\n(00.2) Error (criu/cr-dump.c:2111): Dumping FAILED.\n") == ""
    assert log_reason("(00.1) Warn  (criu/x.c:1): not an error\n") == ""


def test_limit() -> None:
    text = "".join(f"(00.{i}) Error (criu/a.c:{i}): e{i}\n" for i in range(5))
    assert log_reason(text) == "e0; e1"
    assert log_reason(text, limit=1) == "e0"
