"""Lifecycle of container processes as a state pattern, with the legal moves as data.

Strategy: mirrors containerd ``pkg/process/init_state.go`` and ``exec_state.go``. Each state is
a class; the base class refuses every operation with ``FailedPrecondition`` naming the
operation and the state, subclasses override what they allow. An allowed operation does its
work through the process (``p.do_start()`` ...) and then moves with ``p.transition(...)``,
which accepts only targets listed in :data:`TRANSITIONS` (anything else is a bug and raises
:class:`TransitionError`). ``Deleted`` answers delete and kill with ``NotFound`` so
containerd's cleanup can repeat safely.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar, Protocol

from shim.errors import FailedPrecondition, Internal, NotFound

if TYPE_CHECKING:
    from shim.checkpoint.netrestore import NetworkRestore
    from shim.checkpoint.plan import CheckpointPlan, RestoreSource

__all__ = [
    "TRANSITIONS",
    "Created",
    "CreatedFromCheckpoint",
    "Deleted",
    "ExecCreated",
    "ExecDeleted",
    "ExecRunning",
    "ExecStopped",
    "Paused",
    "Process",
    "Running",
    "State",
    "Stopped",
    "TaskStatus",
    "TransitionError",
    "check_transition",
]


class TaskStatus(enum.IntEnum):
    """``containerd.v1.types.Status``."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


class TransitionError(Internal):
    """A move the table does not allow: a bug in the shim, never a user error."""


class Process(Protocol):
    """What states need from the process they drive."""

    def transition(self, target: type[State] | State) -> None: ...
    async def do_start(self) -> None: ...
    async def do_restore(self, source: RestoreSource, network: NetworkRestore) -> None: ...
    async def do_delete(self) -> None: ...
    async def do_kill(self, signal: int, all: bool) -> None: ...
    async def do_pause(self) -> None: ...
    async def do_resume(self) -> None: ...
    async def do_checkpoint(self, plan: CheckpointPlan) -> None: ...


class State:
    """Base state: refuses everything. ``name`` is how errors and tables call it."""

    name: ClassVar[str] = "unknown"
    status: ClassVar[TaskStatus] = TaskStatus.UNKNOWN

    def _refuse(self, operation: str) -> FailedPrecondition:
        return FailedPrecondition(f"cannot {operation} a {self.name} process")

    async def start(self, p: Process) -> None:
        raise self._refuse("start")

    async def delete(self, p: Process) -> None:
        raise self._refuse("delete")

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        raise self._refuse("kill")

    async def pause(self, p: Process) -> None:
        raise self._refuse("pause")

    async def resume(self, p: Process) -> None:
        raise self._refuse("resume")

    async def checkpoint(self, p: Process, plan: CheckpointPlan) -> None:
        raise self._refuse("checkpoint")

    def can_exec(self) -> bool:
        return False

    def exited(self, p: Process) -> None:
        """The process exited (from the reaper)."""
        p.transition(Stopped)


# -- init process -------------------------------------------------------------------------


class Created(State):
    name, status = "created", TaskStatus.CREATED

    async def start(self, p: Process) -> None:
        await p.do_start()
        p.transition(Running)

    async def delete(self, p: Process) -> None:
        await p.do_delete()
        p.transition(Deleted)

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        await p.do_kill(signal, all)

    def can_exec(self) -> bool:
        return True


class CreatedFromCheckpoint(State):
    """Created with a checkpoint: nothing runs yet; start restores (as runc-v2 does).

    Like containerd's ``createdCheckpointState`` (which holds the ``RestoreOpts``) it holds
    what the restore needs: the checkpoint to restore from and the network restore, entered
    at Create (its rebuild service starts early) and left once Start's restore is over or at
    Delete. A Start that failed leaves the state as it was; a retry enters the network afresh.
    """

    name, status = "created from checkpoint", TaskStatus.CREATED

    def __init__(self, source: RestoreSource, network: NetworkRestore) -> None:
        self.source = source
        self.network = network

    async def start(self, p: Process) -> None:
        async with self.network:
            await p.do_restore(self.source, self.network)
        p.transition(Running)

    async def delete(self, p: Process) -> None:
        self.network.close()
        await p.do_delete()
        p.transition(Deleted)

    def exited(self, p: Process) -> None:
        self.network.close()
        p.transition(Stopped)


class Running(State):
    name, status = "running", TaskStatus.RUNNING

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        await p.do_kill(signal, all)

    async def pause(self, p: Process) -> None:
        await p.do_pause()
        p.transition(Paused)

    async def checkpoint(self, p: Process, plan: CheckpointPlan) -> None:
        await p.do_checkpoint(plan)

    def can_exec(self) -> bool:
        return True


class Paused(State):
    name, status = "paused", TaskStatus.PAUSED

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        await p.do_kill(signal, all)

    async def resume(self, p: Process) -> None:
        await p.do_resume()
        p.transition(Running)

    async def checkpoint(self, p: Process, plan: CheckpointPlan) -> None:
        await p.do_checkpoint(plan)


class Stopped(State):
    name, status = "stopped", TaskStatus.STOPPED

    async def delete(self, p: Process) -> None:
        await p.do_delete()
        p.transition(Deleted)

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        raise NotFound("process already finished")

    def exited(self, p: Process) -> None:
        pass  # a second report of the same exit changes nothing


class Deleted(State):
    name, status = "deleted", TaskStatus.STOPPED

    async def delete(self, p: Process) -> None:
        raise NotFound("process already deleted")

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        raise NotFound("process already deleted")

    def exited(self, p: Process) -> None:
        pass


# -- exec processes -----------------------------------------------------------------------


class ExecCreated(Created):
    name = "created exec"

    async def start(self, p: Process) -> None:
        await p.do_start()
        p.transition(ExecRunning)

    async def delete(self, p: Process) -> None:
        await p.do_delete()
        p.transition(ExecDeleted)

    def exited(self, p: Process) -> None:
        p.transition(ExecStopped)


class ExecRunning(State):
    name, status = "running exec", TaskStatus.RUNNING

    async def kill(self, p: Process, signal: int, all: bool) -> None:
        await p.do_kill(signal, all)

    def exited(self, p: Process) -> None:
        p.transition(ExecStopped)


class ExecStopped(Stopped):
    name = "stopped exec"

    async def delete(self, p: Process) -> None:
        await p.do_delete()
        p.transition(ExecDeleted)


class ExecDeleted(Deleted):
    name = "deleted exec"


TRANSITIONS: dict[type[State], frozenset[type[State]]] = {
    Created: frozenset({CreatedFromCheckpoint, Running, Stopped, Deleted}),
    CreatedFromCheckpoint: frozenset({Running, Stopped, Deleted}),
    Running: frozenset({Paused, Stopped}),
    Paused: frozenset({Running, Stopped}),
    Stopped: frozenset({Deleted}),
    Deleted: frozenset(),
    ExecCreated: frozenset({ExecRunning, ExecStopped, ExecDeleted}),
    ExecRunning: frozenset({ExecStopped}),
    ExecStopped: frozenset({ExecDeleted}),
    ExecDeleted: frozenset(),
}
"""Every legal move; :func:`check_transition` enforces it and the tests walk all of it."""


def check_transition(current: State, target: type[State] | State) -> State:
    """Return the new state object if ``current -> target`` is legal. ``target`` is a state
    class, or a state object for a state that holds data (:class:`CreatedFromCheckpoint`).

    Raises:
        TransitionError: the table does not allow it.
    """
    cls = target if isinstance(target, type) else type(target)
    if cls not in TRANSITIONS[type(current)]:
        raise TransitionError(f"illegal transition from {current.name} to {cls.name}")
    return target() if isinstance(target, type) else target

