"""Which frames in hand are stragglers worth a second render, and who renders them."""

from __future__ import annotations

import math

import pytest

from supervisor.frames.speculation import (
    InHand,
    Policy,
    expected_left,
    farm_pace,
    pair,
    stragglers,
)


def held(frame: int, user: str, elapsed: float, pace: float | None, start_up: float = 0.0):
    return InHand(frame=frame, user_id=user, elapsed=elapsed, pace=pace, start_up=start_up)


def test_the_farm_pace_is_the_median_of_the_measured_paces() -> None:
    assert farm_pace([1.0, None, 3.0, 2.0, 100.0]) == 2.5
    assert farm_pace([None, None]) is None


def test_a_frame_held_past_k_of_its_holders_paces_is_a_straggler() -> None:
    hung = held(7, "hung", elapsed=2.5, pace=1.0)
    fine = held(8, "fine", elapsed=1.5, pace=1.0)
    assert stragglers([fine, hung], farm=1.0, after_paces=2.0) == [hung]


def test_a_user_without_history_is_judged_by_the_farm_pace() -> None:
    new = held(3, "new", elapsed=2.1, pace=None)
    assert stragglers([new], farm=1.0, after_paces=2.0) == [new]
    assert stragglers([new], farm=None, after_paces=2.0) == []


def test_a_user_slow_by_nature_is_a_straggler_while_it_still_needs_k_farm_paces() -> None:
    """A 10x slower user never exceeds k of its own paces; what it still needs does."""
    early = held(1, "slow", elapsed=3.0, pace=10.0)
    late = held(2, "slow2", elapsed=8.5, pace=10.0)
    assert stragglers([early, late], farm=1.0, after_paces=2.0) == [early]


def test_uniform_users_make_no_stragglers() -> None:
    farm = [held(n, f"u{n}", elapsed=0.9 * (n % 3 + 1) / 3, pace=1.0) for n in range(20)]
    assert stragglers(farm, farm=1.0, after_paces=2.0) == []


def test_a_new_lists_start_up_is_not_held_against_its_holder() -> None:
    starting = held(4, "u", elapsed=4.0, pace=1.0, start_up=3.0)
    assert starting.working == 1.0
    assert stragglers([starting], farm=1.0, after_paces=2.0) == []


def test_the_longest_held_come_first() -> None:
    a = held(1, "a", elapsed=5.0, pace=1.0)
    b = held(2, "b", elapsed=9.0, pace=1.0)
    c = held(3, "c", elapsed=7.0, pace=1.0)
    assert [s.frame for s in stragglers([a, b, c], farm=1.0, after_paces=2.0)] == [2, 3, 1]


def test_an_overdue_frame_has_no_known_end() -> None:
    assert expected_left(held(1, "a", elapsed=3.0, pace=1.0), 1.0, 2.0) == math.inf
    assert expected_left(held(1, "a", elapsed=1.5, pace=1.0), 1.0, 2.0) == 0.0
    assert expected_left(held(1, "a", elapsed=3.0, pace=10.0), 1.0, 2.0) == 7.0


def test_each_straggler_goes_to_the_fastest_idle_user_that_would_beat_its_holder() -> None:
    hung = held(5, "hung", elapsed=9.0, pace=1.0)
    slow = held(6, "slow", elapsed=1.0, pace=10.0)
    plan = pair(
        [hung, slow],
        {"quick": 0.5, "snail": 12.0, "new": None},
        farm=1.0,
        budget=5,
        after_paces=2.0,
    )
    # The snail (12 s a frame) would not beat the slow holder's 9 s left; nobody is spare
    # for it once quick and new have theirs.
    assert plan == {"quick": 5, "new": 6}


def test_pairing_stops_at_the_budget_and_needs_a_farm_pace() -> None:
    frames = [held(n, f"h{n}", elapsed=9.0, pace=1.0) for n in range(3)]
    assert (
        len(pair(frames, {"a": 1.0, "b": 1.0, "c": 1.0}, farm=1.0, budget=2, after_paces=2.0)) == 2
    )
    assert pair(frames, {"a": 1.0}, farm=1.0, budget=0, after_paces=2.0) == {}
    assert pair(frames, {"a": 1.0}, farm=None, budget=3, after_paces=2.0) == {}


def test_a_user_never_duplicates_its_own_frame() -> None:
    own = held(1, "a", elapsed=9.0, pace=1.0)
    assert pair([own], {"a": 0.5}, farm=1.0, budget=1, after_paces=2.0) == {}


@pytest.mark.parametrize(
    ("percent", "total", "budget"), [(10, 500, 50), (5, 500, 25), (10, 9, 0), (0, 500, 0)]
)
def test_the_budget_is_a_share_of_the_frames_rounded_down(
    percent: int, total: int, budget: int
) -> None:
    assert Policy(extra_percent=percent, after_paces=2.0).budget(total) == budget
