"""The lifecycle table, walked exhaustively: every listed move is accepted, every other refused."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from shim.checkpoint.plan import RestoreSource
from shim.errors import FailedPrecondition, NotFound
from shim.state import (
    TRANSITIONS,
    Created,
    CreatedFromCheckpoint,
    Deleted,
    ExecCreated,
    ExecDeleted,
    ExecRunning,
    ExecStopped,
    Paused,
    Running,
    State,
    Stopped,
    TransitionError,
    check_transition,
)

ALL = list(TRANSITIONS)


class FakeNetwork:
    """Stands in for a NetworkRestore: counts entries and closes."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def __aenter__(self) -> FakeNetwork:
        self.log.append("enter")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.log.append("close")


def make(cls: type[State]) -> State:
    """A state object; the created-from-checkpoint state holds its restore data."""
    if cls is CreatedFromCheckpoint:
        return CreatedFromCheckpoint(RestoreSource("/img"), FakeNetwork())  # type: ignore[arg-type]
    return cls()


@pytest.mark.parametrize(("current", "target"), list(itertools.product(ALL, ALL)))
def test_transition_table(current: type[State], target: type[State]) -> None:
    if target in TRANSITIONS[current]:
        assert isinstance(check_transition(make(current), make(target)), target)
    else:
        with pytest.raises(TransitionError, match=f"from {current.name} to {target.name}"):
            check_transition(make(current), make(target))


class FakeProcess:
    """Records which work the state asked for; moves like a real process."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.calls: list[str] = []

    def transition(self, target: type[State] | State) -> None:
        self.state = check_transition(self.state, target)

    async def do_start(self) -> None:
        self.calls.append("start")

    async def do_restore(self, source: RestoreSource, network: FakeNetwork) -> None:
        assert network.log[-1] == "enter"  # the state entered it around the restore
        self.calls.append(f"restore {source.images_dir}")

    async def do_delete(self) -> None:
        self.calls.append("delete")

    async def do_kill(self, signal: int, all: bool) -> None:
        self.calls.append(f"kill {signal} {all}")

    async def do_pause(self) -> None:
        self.calls.append("pause")

    async def do_resume(self) -> None:
        self.calls.append("resume")

    async def do_checkpoint(self, request: object) -> None:
        self.calls.append("checkpoint")


# operation -> {state: (work done, state after)}; states not listed must refuse.
ALLOWED: dict[str, dict[type[State], tuple[str, type[State]]]] = {
    "start": {
        Created: ("start", Running),
        CreatedFromCheckpoint: ("restore /img", Running),
        ExecCreated: ("start", ExecRunning),
    },
    "delete": {
        Created: ("delete", Deleted),
        CreatedFromCheckpoint: ("delete", Deleted),
        Stopped: ("delete", Deleted),
        ExecCreated: ("delete", ExecDeleted),
        ExecStopped: ("delete", ExecDeleted),
    },
    "kill": {
        Created: ("kill 9 False", Created),
        Running: ("kill 9 False", Running),
        Paused: ("kill 9 False", Paused),
        ExecCreated: ("kill 9 False", ExecCreated),
        ExecRunning: ("kill 9 False", ExecRunning),
    },
    "pause": {Running: ("pause", Paused)},
    "resume": {Paused: ("resume", Running)},
    "checkpoint": {Running: ("checkpoint", Running), Paused: ("checkpoint", Paused)},
}
NOT_FOUND = {
    "delete": {Deleted, ExecDeleted},
    "kill": {Stopped, Deleted, ExecStopped, ExecDeleted},
}


def _call(op: str, p: FakeProcess) -> None:
    state = p.state
    coro = {
        "start": lambda: state.start(p),
        "delete": lambda: state.delete(p),
        "kill": lambda: state.kill(p, 9, False),
        "pause": lambda: state.pause(p),
        "resume": lambda: state.resume(p),
        "checkpoint": lambda: state.checkpoint(p, object()),
    }[op]()
    asyncio.run(coro)


@pytest.mark.parametrize(("op", "state"), list(itertools.product(ALLOWED, ALL)))
def test_operation_matrix(op: str, state: type[State]) -> None:
    p = FakeProcess(make(state))
    if state in ALLOWED[op]:
        work, after = ALLOWED[op][state]
        _call(op, p)
        assert p.calls == [work]
        assert type(p.state) is after
    elif state in NOT_FOUND.get(op, set()):
        with pytest.raises(NotFound):
            _call(op, p)
        assert p.calls == []
    else:
        with pytest.raises(FailedPrecondition, match=f"cannot {op} a {state.name} process"):
            _call(op, p)
        assert p.calls == [] and type(p.state) is state


@pytest.mark.parametrize(
    ("state", "after"),
    [
        (Created, Stopped),
        (CreatedFromCheckpoint, Stopped),
        (Running, Stopped),
        (Paused, Stopped),
        (Stopped, Stopped),
        (Deleted, Deleted),
        (ExecCreated, ExecStopped),
        (ExecRunning, ExecStopped),
        (ExecStopped, ExecStopped),
        (ExecDeleted, ExecDeleted),
    ],
)
def test_exit_moves_live_states_to_stopped(state: type[State], after: type[State]) -> None:
    p = FakeProcess(make(state))
    p.state.exited(p)
    assert type(p.state) is after


def test_exec_allowed_only_in_created_and_running() -> None:
    assert {s for s in ALL if make(s).can_exec()} == {Created, Running, ExecCreated}


def test_created_from_checkpoint_owns_its_network_restore() -> None:
    """Start enters the network restore around the restore and leaves it; a failed Start
    keeps the state (a retry enters it again); Delete and an exit close it."""
    state = make(CreatedFromCheckpoint)
    assert isinstance(state, CreatedFromCheckpoint)
    network = state.network
    assert isinstance(network, FakeNetwork)

    class Failing(FakeProcess):
        async def do_restore(self, source: RestoreSource, network: FakeNetwork) -> None:
            raise FailedPrecondition("CRIU says no")

    failing = Failing(state)
    with pytest.raises(FailedPrecondition):
        _call("start", failing)  # type: ignore[arg-type]
    assert failing.state is state and network.log == ["enter", "close"]
    p = FakeProcess(state)
    _call("start", p)
    assert type(p.state) is Running and network.log == ["enter", "close"] * 2
    for op in ("delete", "exit"):
        network.log.clear()
        p = FakeProcess(state)
        if op == "exit":
            state.exited(p)
        else:
            _call(op, p)
        assert network.log == ["close"]


def test_transition_to_a_data_state_checks_the_table_and_keeps_the_object() -> None:
    target = make(CreatedFromCheckpoint)
    assert check_transition(Created(), target) is target
    with pytest.raises(TransitionError, match="from running to created from checkpoint"):
        check_transition(Running(), target)
