"""The ETA: a user's pace folded from its deliveries, and the remaining time of a farm with
its 80 % interval. The last test plays a small slice of bench/eta_model.py's farms."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import eta_model
from supervisor import eta
from supervisor.eta import Estimate, Pace, estimate, fold, fold_list_start
from supervisor.workloads import estimates


def _folded(
    intervals: list[float], start: tuple[float | None, float | None, int] = (None, None, 0)
):
    pace, spread, samples = start
    for interval in intervals:
        pace, spread, samples = fold(pace, spread, samples, interval)
    return pace, spread, samples


def _steady(seconds: float, count: int = 20) -> tuple[float, float, int]:
    """A user that delivered `count` frames of about `seconds` (+-5 %)."""
    return _folded([seconds * (1.05 if i % 2 else 0.95) for i in range(count)])


def _user(
    pace: float | None = 4.0,
    *,
    samples: int = 10,
    in_hand: float | None = 1.0,
    held: int = 10,
    spread: float | None = None,
) -> Pace:
    if pace is None:
        return Pace(None, None, 0, in_hand, held)
    return Pace(pace, pace * 0.05 if spread is None else spread, samples, in_hand, held)


# --- fold -------------------------------------------------------------------------------


def test_the_first_frame_time_is_the_pace() -> None:
    assert fold(None, None, 0, 3.0) == (3.0, 3.0 * eta.SPREAD_START, 1)


def test_fold_converges_to_a_steady_frame_time() -> None:
    pace, spread, samples = _steady(4.0, 30)
    assert samples == 30
    assert pace == pytest.approx(4.0, rel=0.03)
    assert spread < 0.4


def test_one_outlier_frame_moves_the_pace_little() -> None:
    before = _steady(2.0)
    after, _, _ = fold(*before, 20.0)
    assert after < before[0] * 1.2
    recovered, _, _ = _folded([2.0] * 5, fold(*before, 20.0))
    assert recovered == pytest.approx(2.0, rel=0.05)


def test_a_fast_outlier_moves_the_pace_little_too() -> None:
    before = _steady(2.0)
    after, _, _ = fold(*before, 0.01)
    assert after > before[0] * 0.85


def test_fold_follows_a_five_times_slowdown_within_eight_frames() -> None:
    state = _steady(2.0)
    for _ in range(8):
        state = fold(*state, 10.0)
    assert state[0] >= 8.0


def test_fold_keeps_near_the_mean_of_heavy_tailed_frames() -> None:
    """Frame times of a scene with rare heavy frames (Pareto, alpha 2.2): the pace stays
    near their mean, which the remaining time needs, not near their median."""
    rng = random.Random(5)
    intervals = [min(12.0, rng.paretovariate(2.2)) for _ in range(400)]
    paces = []
    state: tuple[float | None, float | None, int] = (None, None, 0)
    for interval in intervals:
        state = fold(*state, interval)
        paces.append(state[0])
    mean, median = statistics.fmean(intervals), statistics.median(intervals)
    assert statistics.fmean(paces[20:]) == pytest.approx(mean, rel=0.1)
    assert abs(statistics.fmean(paces[20:]) - mean) < abs(statistics.fmean(paces[20:]) - median)


def test_a_list_start_is_a_running_mean_of_first_intervals() -> None:
    assert fold_list_start(None, 7.0) == 7.0
    assert fold_list_start(7.0, 3.0) == pytest.approx(7.0 - 4.0 * eta.LIST_START_ALPHA)


# --- estimate ---------------------------------------------------------------------------


def test_no_active_user_says_so() -> None:
    assert estimate(100, []) == Estimate(None, None, None, "no-users")


def test_too_few_timed_frames_is_warming_up() -> None:
    users = [_user(samples=1), _user(samples=1), _user(None)]
    assert estimate(100, users).basis == "warming-up"
    assert estimate(100, users).seconds is None
    one_user_measured = [_user(samples=50), _user(None)]
    assert estimate(100, one_user_measured).basis == "warming-up"
    enough = [_user(samples=3), _user(samples=3), _user(None)]
    assert estimate(100, enough).basis == "measured"


def test_nothing_left_is_zero() -> None:
    assert estimate(0, [_user()]) == Estimate(0.0, 0.0, 0.0, "measured")


def test_the_estimate_is_about_the_work_over_the_users() -> None:
    """400 frames, 10 users at 4 s a frame: 160 s of rendering, plus the lists' start-ups."""
    answer = estimate(400, [_user(4.0) for _ in range(10)])
    assert answer.seconds is not None
    assert 160 <= answer.seconds <= 160 * 1.25


def test_more_users_finish_sooner() -> None:
    few = estimate(300, [_user(4.0) for _ in range(5)])
    many = estimate(300, [_user(4.0) for _ in range(10)])
    assert few.seconds
    assert many.seconds
    assert many.seconds < few.seconds * 0.6


def test_expected_users_still_to_come_shorten_it() -> None:
    users = [_user(4.0) for _ in range(5)]
    alone = estimate(600, users, expected_users=5)
    helped = estimate(600, users, expected_users=10)
    assert helped.seconds
    assert alone.seconds
    assert helped.low_seconds is not None
    assert alone.low_seconds is not None
    assert helped.seconds < alone.seconds
    assert helped.low_seconds < alone.low_seconds


def test_a_frame_nearly_done_counts() -> None:
    """One frame left, in the hands of a user with 10 s frames: 9 s into it, it is nearly in."""
    others = [_user(10.0, in_hand=None, held=0) for _ in range(3)]
    nearly = estimate(1, [_user(10.0, in_hand=9.0, held=1), *others])
    just_started = estimate(1, [_user(10.0, in_hand=0.0, held=1), *others])
    assert nearly.seconds is not None
    assert just_started.seconds is not None
    assert nearly.seconds < just_started.seconds - 5


def test_unmeasured_users_count_at_the_typical_pace() -> None:
    measured = [_user(4.0) for _ in range(5)]
    with_new = estimate(400, [*measured, *[_user(None, in_hand=1.0) for _ in range(5)]])
    only_measured = estimate(400, measured)
    assert with_new.seconds
    assert only_measured.seconds
    assert with_new.seconds < only_measured.seconds * 0.7


def test_a_stalled_user_does_not_keep_the_estimate_optimistic() -> None:
    """The last frames are with a user that stopped delivering: the longer its silence,
    the later the estimate, without end."""
    idle = [_user(4.0, in_hand=None, held=0) for _ in range(4)]
    answers = [
        estimate(3, [_user(4.0, in_hand=silence, held=3), *idle]).seconds
        for silence in (2.0, 60.0, 600.0, 6000.0)
    ]
    assert all(a is not None for a in answers)
    assert answers == sorted(answers)
    assert answers[-1] > 10 * answers[0]


def test_a_slowed_user_makes_a_long_run_later() -> None:
    steady = [_user(4.0, in_hand=2.0) for _ in range(5)]
    slowed = [*steady[:4], _user(4.0, in_hand=40.0)]
    fine, late = estimate(500, steady), estimate(500, slowed)
    assert fine.seconds
    assert late.seconds
    assert late.seconds > fine.seconds * 1.1


def test_as_progress_keys() -> None:
    keys = Estimate(12.345, 10.04, 20.06, "measured").as_progress_keys()
    assert keys == {
        "eta_seconds": 12.3,
        "eta_low_seconds": 10.0,
        "eta_high_seconds": 20.1,
        "eta_basis": "measured",
    }
    assert Estimate(None, None, None, "warming-up").as_progress_keys() == {
        "eta_seconds": None,
        "eta_low_seconds": None,
        "eta_high_seconds": None,
        "eta_basis": "warming-up",
    }


_paces = st.builds(
    Pace,
    frame_seconds=st.one_of(st.none(), st.floats(0.05, 500)),
    spread_seconds=st.floats(0, 100),
    samples=st.integers(0, 200),
    in_hand_seconds=st.one_of(st.none(), st.floats(0, 5000)),
    held=st.integers(0, 50),
    list_start_seconds=st.one_of(st.none(), st.floats(0, 600)),
)


@settings(max_examples=300, deadline=None)
@given(
    remaining=st.integers(0, 5000),
    users=st.lists(_paces, max_size=25),
    expected=st.one_of(st.none(), st.integers(0, 40)),
)
def test_low_central_high_are_ordered(
    remaining: int, users: list[Pace], expected: int | None
) -> None:
    answer = estimate(remaining, users, expected_users=expected)
    if answer.basis == "measured":
        assert answer.seconds is not None
        assert answer.low_seconds is not None
        assert answer.high_seconds is not None
        assert 0 <= answer.low_seconds <= answer.seconds <= answer.high_seconds
    else:
        assert answer.seconds is None
        assert answer.low_seconds is None
        assert answer.basis in ("warming-up", "no-users")


# --- the model --------------------------------------------------------------------------


def test_a_slice_of_the_model_is_calibrated() -> None:
    """One small farm of each kind: each checkpoint answers with numbers, and the interval
    holds the actual finish at most of them (the full calibration is the benchmark's)."""
    runs = {
        farm: eta_model.Model(eta_model.scenario(farm, seed=7, frames=200)).run()
        for farm in eta_model.FARMS
    }
    for run in runs.values():
        assert [cp.progress for cp in run.checkpoints] == list(eta_model.CHECKPOINTS)
        assert all(cp.answer.basis == "measured" for cp in run.checkpoints[1:])
    overall = eta_model.combined(eta_model.score([run]) for run in runs.values())
    assert overall.coverage >= 0.6
    assert overall.median_error_50 <= 0.3


def test_an_answer_kept_for_a_while_is_aged_to_now() -> None:
    keys = {"eta_seconds": 3.0, "eta_low_seconds": 0.4, "eta_high_seconds": None}
    keys["eta_basis"] = "measured"

    aged = estimates.age(keys, 0.6)

    assert aged == {
        "eta_seconds": 2.4,
        "eta_low_seconds": 0.0,
        "eta_high_seconds": None,
        "eta_basis": "measured",
    }
    assert keys["eta_seconds"] == 3.0
