"""shim.migrate._precopy: P.Haul's pre-dump round rules on recorded per-round page counts."""

from __future__ import annotations

import pytest

from shim.migrate._precopy import MAX_ROUNDS, Decision, Stop, next_round, rounds


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        # a quiet workload: the second round is already small
        ([262144, 40], Decision(2, Stop.SMALL_ROUND)),
        # exactly 64 pages is small enough
        ([262144, 64], Decision(2, Stop.SMALL_ROUND)),
        ([262144, 65], Decision(2, Stop.CONTINUE)),
        # dirtying faster than copying: a round writes more than 10 % more than the last
        ([262144, 30000, 33001], Decision(3, Stop.GROWING)),
        # exactly 10 % more is still allowed
        ([262144, 30000, 33000], Decision(3, Stop.CONTINUE)),
        # shrinking slowly: stops at the eighth round
        ([262144, 9000, 8900, 8800, 8700, 8600, 8500, 8400], Decision(8, Stop.MAX_ROUNDS)),
        ([], Decision(0, Stop.CONTINUE)),
    ],
)
def test_next_round(written: list[int], expected: Decision) -> None:
    assert next_round(written) == expected


def test_replay_stops_at_the_first_stopping_round() -> None:
    # recorded: the fourth round grew by 20 %; rounds after it never run
    assert rounds([262144, 12000, 10000, 12000, 50, 40]) == Decision(4, Stop.GROWING)


def test_replay_never_goes_past_the_limit() -> None:
    recorded = [100000 - i for i in range(12)]
    assert rounds(recorded) == Decision(MAX_ROUNDS, Stop.MAX_ROUNDS)


def test_a_first_round_that_is_small_stops_at_once() -> None:
    assert rounds([10, 5]) == Decision(1, Stop.SMALL_ROUND)
