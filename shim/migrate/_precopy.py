"""Pre-copy iteration rules (P.Haul's), as data in and a decision out.

Strategy: pure. P.Haul runs at most 8 pre-dump rounds and stops early when a round wrote
at most 64 pages (what is left is small enough to move frozen) or wrote more than 10 % more
than the round before (memory is dirtied faster than it is copied: more rounds do not help).
:func:`next_round` is the rule; :func:`rounds` replays it over recorded per-round page
counts. The kernel here has no soft-dirty tracking, so ``pyrunc migrate --method pre-copy``
is refused before any round runs (:data:`shim.migrate._checks`); the rules are kept and
tested for hosts that have it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "GROWTH_LIMIT",
    "MAX_ROUNDS",
    "SMALL_ROUND_PAGES",
    "Decision",
    "Stop",
    "next_round",
    "rounds",
]

MAX_ROUNDS: Final = 8
SMALL_ROUND_PAGES: Final = 64
GROWTH_LIMIT: Final = 0.10


class Stop(enum.Enum):
    """Why pre-dumping stops (then the final, frozen dump follows)."""

    CONTINUE = "continue"
    MAX_ROUNDS = "max-rounds"
    SMALL_ROUND = "small-round"
    GROWING = "growing"


@dataclass(frozen=True, slots=True)
class Decision:
    """After ``rounds_done`` rounds: go on or stop, and why."""

    rounds_done: int
    stop: Stop


def next_round(written: Sequence[int]) -> Decision:
    """Whether another pre-dump round should run after rounds that wrote ``written``
    pages each (oldest first)."""
    done = len(written)
    if done == 0:
        return Decision(0, Stop.CONTINUE)
    last = written[-1]
    if last <= SMALL_ROUND_PAGES:
        return Decision(done, Stop.SMALL_ROUND)
    if done >= 2 and last > written[-2] * (1 + GROWTH_LIMIT):
        return Decision(done, Stop.GROWING)
    if done >= MAX_ROUNDS:
        return Decision(done, Stop.MAX_ROUNDS)
    return Decision(done, Stop.CONTINUE)


def rounds(recorded: Sequence[int]) -> Decision:
    """Replay :func:`next_round` over recorded per-round counts: the decision at the first
    round where it stops (or after all of them)."""
    for i in range(1, len(recorded) + 1):
        decision = next_round(recorded[:i])
        if decision.stop is not Stop.CONTINUE:
            return decision
    return next_round(recorded)
