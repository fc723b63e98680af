"""What the source decides after a lost commit confirmation, and how it judges post-copy."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
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
    opts = replace(OPTS, work_dir=str(tmp_path / "out"))
    _, got, message = _finish_postcopy(opts, _Agent(_Restarted()), tmp_path, None,
                                       Outcome.MIGRATED, _gone_pid(), _no_put_back)
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
                          serving: list[int], while_committing: bool = False
                          ) -> tuple[list[str], Any]:
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
        result: Any = _postcopy_through_interrupts(OPTS, None, Path("/w"), None,
                                                   Outcome.MIGRATED, 1, prog, _no_put_back,
                                                   while_committing)
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


def test_an_interrupt_while_the_commit_was_confirmed_counts_as_the_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The signal came after the commit was sent, before the agent confirmed it (and it
    had arrived): post-copy is waited for as after a first interrupt in it."""
    notices, result = _interrupted_postcopy(monkeypatch, 0, [4242], while_committing=True)
    assert result == (None, Outcome.MIGRATED, "")
    assert len(notices) == 1 and "the move is committed" in notices[0], notices


def test_a_second_interrupt_leaves_saying_what_is_left_and_how_to_remove_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    notices, result = _interrupted_postcopy(monkeypatch, 2, [4242])
    assert isinstance(result, KeyboardInterrupt)
    left = notices[-1]
    assert "PAUSED" in left and "pid 4242" in left, left
    assert "ctr -n n task rm -f c1; ctr -n n containers rm c1" in left, left
    notices, _ = _interrupted_postcopy(monkeypatch, 2, [])
    # CRIU is done, but whether every page was served is only in its log: both ways named
    assert "PAUSED" in notices[-1] and LAZY_DONE in notices[-1], notices[-1]
    assert "ctr -n n containers rm c1" in notices[-1] and "task resume c1" in notices[-1]


def _no_put_back() -> str:
    raise AssertionError("the source was put back")


class _Judged:
    """An agent for :func:`_finish_postcopy`: Status answers ``status`` (or raises it);
    Discard succeeds unless ``discard`` is an exception, which it raises."""

    def __init__(self, status: Any, discard: BaseException | None = None) -> None:
        self.status, self.discard, self.discarded = status, discard, 0

    def Status(self, request: Any, timeout: float) -> Any:
        if isinstance(self.status, BaseException):
            raise self.status
        return agent_pb2.StatusReply(status=self.status)

    def Discard(self, request: Any, timeout: float) -> None:
        self.discarded += 1
        if self.discard is not None:
            raise self.discard


def _judge(tmp_path: Path, log: str, agent: _Judged) -> tuple[Outcome, str, int]:
    """Judge a post-copy whose source (this process: alive) is paused; the outcome, the
    message, and how often the source was put back."""
    (tmp_path / "dump.log").write_text(f"(00.1) {log}\n")
    put: list[int] = []

    def put_back() -> str:
        put.append(1)
        return ""

    opts = replace(OPTS, work_dir=str(tmp_path / "out"))
    _, outcome, message = _finish_postcopy(opts, agent, tmp_path, None, Outcome.MIGRATED,
                                           os.getpid(), put_back)
    return outcome, message, len(put)


def test_a_failed_transfer_puts_the_source_back_once_the_destination_is_discarded(
        tmp_path: Path) -> None:
    agent = _Judged("RUNNING")
    outcome, message, put = _judge(tmp_path, "Lazy pages transfer FAILED", agent)
    assert (outcome, put, agent.discarded) == (Outcome.POSTCOPY_FAILED, 1, 1)
    assert "resumed the source" in message and "was discarded" in message, message


def test_no_second_copy_when_the_destination_cannot_be_discarded(tmp_path: Path) -> None:
    """The transfer failed and the agent cannot be reached: the destination may still run,
    so the source stays paused (never two copies) and the message says how to settle it."""
    agent = _Judged(_Restarted(), discard=_Restarted())
    outcome, message, put = _judge(tmp_path, "Lazy pages transfer FAILED", agent)
    assert (outcome, put) == (Outcome.POSTCOPY_FAILED, 0)
    assert "could not be discarded" in message and "stays PAUSED" in message, message
    assert "task resume c1" in message and "task rm -f c1" in message, message


def test_a_complete_transfer_to_an_unknown_destination_keeps_the_source(tmp_path: Path) -> None:
    """Every page served, but the destination's state is unknown: the source, whole and
    paused, is not removed (it may be the only copy) nor resumed (it may not)."""
    outcome, message, put = _judge(tmp_path, LAZY_DONE, _Judged(_Restarted()))
    assert (outcome, put) == (Outcome.POSTCOPY_FAILED, 0)
    assert "stays PAUSED" in message and "unknown" in message, message


def test_a_destination_that_died_in_post_copy_gives_the_container_back(tmp_path: Path) -> None:
    """The destination's task ended during post-copy: known not running, so the source is
    put back even if its discard fails."""
    agent = _Judged("STOPPED", discard=_Restarted())
    outcome, message, put = _judge(tmp_path, LAZY_DONE, agent)
    assert (outcome, put) == (Outcome.POSTCOPY_FAILED, 1)
    assert "source resumed from the freeze" in message, message


def test_a_complete_transfer_to_a_running_destination_is_a_move(tmp_path: Path) -> None:
    agent = _Judged("RUNNING")
    assert _judge(tmp_path, LAZY_DONE, agent) == (Outcome.MIGRATED, "", 0)
    assert agent.discarded == 0


def test_tls_is_reported_only_for_a_verified_peer(tmp_path: Path) -> None:
    """CRIU logs "TLS handshake completed" before it checks the peer's certificate: a
    session whose peer was then refused is no TLS-protected transfer."""
    from shim.migrate._source import _tls_seen

    log = tmp_path / "dump.log"
    assert _tls_seen(tmp_path) is False  # no log
    log.write_text("(00.1) Starting page server\n")
    assert _tls_seen(tmp_path) is False
    log.write_text("(00.1) TLS handshake completed\n(00.2) Lazy pages transfer finished\n")
    assert _tls_seen(tmp_path) is True
    log.write_text("(00.1) TLS handshake completed\n(00.1) Error (criu/tls.c:224): Invalid "
                   "certificate\n(00.1) The certificate issuer is unknown.\n")
    assert _tls_seen(tmp_path) is False
