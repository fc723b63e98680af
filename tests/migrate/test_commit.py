"""What the source decides after a lost commit confirmation, and how it judges post-copy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.api.pyrunc.migrate.v1 import agent_pb2
from shim.migrate import _source
from shim.migrate._agent import PROVISIONAL, stages_of
from shim.migrate._source import (
    LAZY_DONE,
    MigrateOptions,
    Progress,
    _committed,
    _finish_postcopy,
    _lazy_verdict,
    _postcopy_through_interrupts,
    _terminate_as_interrupt,
)
from shim.migrate._stats import Outcome


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


class _Restarted(_Unavailable):
    def details(self) -> str:
        return "connection refused"


def _gone_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(("log", "outcome"), [
    (LAZY_DONE, Outcome.MIGRATED),
    ("Lazy pages transfer FAILED", Outcome.POSTCOPY_FAILED),
])
def test_postcopy_judged_when_the_agent_cannot_be_asked(tmp_path: Path, log: str,
                                                        outcome: Outcome) -> None:
    """The agent restarted after the commit: its Status raises; the verdict is CRIU's, the
    destination's state is reported unknown (not lost, not an escaping RpcError)."""
    (tmp_path / "dump.log").write_text(f"(00.1) {log}\n")
    _, got, message = _finish_postcopy(OPTS, None, _Agent(_Restarted()),  # type: ignore[arg-type]
                                       tmp_path, None, Outcome.MIGRATED, _gone_pid())
    assert got is outcome
    assert "unknown (UNAVAILABLE asking the agent: connection refused)" in message


def test_sigterm_and_sighup_interrupt_once_and_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
            try:
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises here
            except KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one: ignored, the way back runs
                time.sleep(0.05)
                raise
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def _interrupted_postcopy(monkeypatch: pytest.MonkeyPatch, interrupts: int,
                          serving: list[int]) -> tuple[list[str], Any]:
    """Post-copy interrupted ``interrupts`` times (each wait raises as a signal would, then
    it ends); the notices and the result (or the exception)."""
    calls = []

    def finish(*_: Any) -> tuple[None, Outcome, str]:
        calls.append(1)
        if len(calls) <= interrupts:
            raise KeyboardInterrupt
        return None, Outcome.MIGRATED, ""

    monkeypatch.setattr(_source, "_finish_postcopy", finish)
    monkeypatch.setattr(_source, "_lazy_dumps", lambda cid: serving)
    notices: list[str] = []
    prog = Progress(notice=notices.append)
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    try:
        result: Any = _postcopy_through_interrupts(OPTS, None, None, Path("/w"),  # type: ignore[arg-type]
                                                   None, Outcome.MIGRATED, 1, prog)
    except KeyboardInterrupt as exc:
        result = exc
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == before
    return notices, result


def test_a_first_interrupt_in_post_copy_waits_on_for_the_committed_move(
        monkeypatch: pytest.MonkeyPatch) -> None:
    notices, result = _interrupted_postcopy(monkeypatch, 1, [4242])
    assert result == (None, Outcome.MIGRATED, "")
    assert len(notices) == 1 and "the move is committed" in notices[0], notices
    assert "c1 runs on x:1" in notices[0] and "interrupt again" in notices[0]


def test_a_second_interrupt_leaves_saying_what_is_left_and_how_to_remove_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    notices, result = _interrupted_postcopy(monkeypatch, 2, [4242])
    assert isinstance(result, KeyboardInterrupt)
    left = notices[-1]
    assert "PAUSED" in left and "pid 4242" in left, left
    assert "ctr -n n task rm -f c1; ctr -n n containers rm c1" in left, left
    notices, _ = _interrupted_postcopy(monkeypatch, 2, [])
    assert "post-copy is over" in notices[-1] and "ctr -n n containers rm c1" in notices[-1]
