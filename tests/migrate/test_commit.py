"""What the source decides after a lost commit confirmation, and how it judges post-copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.api.pyrunc.migrate.v1 import agent_pb2
from shim.migrate._agent import PROVISIONAL, stages_of
from shim.migrate._source import LAZY_DONE, MigrateOptions, _committed, _lazy_verdict


class _Unavailable(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class _Agent:
    """Answers Status with the given replies in turn (an exception is raised), the last
    one for ever after."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.asked = 0

    def Status(self, request: Any, timeout: float) -> Any:
        assert request.container_id == "c1" and timeout > 0
        self.asked += 1
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, BaseException):
            raise reply
        return agent_pb2.StatusReply(status=reply)


OPTS = MigrateOptions(containerd="", namespace="n", container_id="c1", to="x:1")


def test_committed_once_no_longer_pending_and_running() -> None:
    agent = _Agent(_Unavailable(), PROVISIONAL, PROVISIONAL, "RUNNING")
    assert _committed(agent, OPTS, wait=30) == "committed"
    assert agent.asked == 4


def test_rolled_back_when_nothing_is_there() -> None:
    assert _committed(_Agent(PROVISIONAL, ""), OPTS, wait=30) == "rolled back"


def test_there_but_not_running_is_not_taken_as_committed() -> None:
    assert _committed(_Agent("STOPPED"), OPTS, wait=30) == "committed, but its task is STOPPED"


@pytest.mark.parametrize(("reply", "why"), [(PROVISIONAL, "unknown: still pending there"),
                                            (_Unavailable(), "unknown: UNAVAILABLE asking")])
def test_unknown_when_it_cannot_be_told_in_time(reply: Any, why: str) -> None:
    assert _committed(_Agent(reply), OPTS, wait=0.3).startswith(why)


def test_stages_of_names_only_that_containers_migrations(tmp_path: Path) -> None:
    for name in ("stage-c1-0123abcd", "stage-c1-x-0123abcd", "stage-c-0123abcd",
                 "stage-c1-0123abcde", "other-c1-0123abcd"):
        (tmp_path / name).mkdir()
    assert [p.name for p in stages_of(tmp_path, "c1")] == ["stage-c1-0123abcd"]
    assert [p.name for p in stages_of(tmp_path, "c1-x")] == ["stage-c1-x-0123abcd"]


def test_lazy_verdict_is_the_dump_logs_last_word(tmp_path: Path) -> None:
    assert _lazy_verdict(tmp_path).startswith("no dump log")
    log = tmp_path / "dump.log"
    log.write_text("(00.1) Starting lazy pages server\n")
    assert _lazy_verdict(tmp_path) == "no verdict in its dump log"
    log.write_text("(00.1) x\n(02.4) Error (criu/cr-dump.c:1): Lazy pages transfer FAILED.\n")
    assert _lazy_verdict(tmp_path) == "Lazy pages transfer FAILED"
    log.write_text("(00.1) x\n(02.4) Lazy pages transfer finished successfully\n")
    assert _lazy_verdict(tmp_path) == LAZY_DONE
