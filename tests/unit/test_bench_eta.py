"""The ETA backtest's bookkeeping: which answer is a checkpoint, and how checkpoints score."""

from __future__ import annotations

import pytest

from bench.eta import (
    CHECKPOINTS,
    Answer,
    Checkpoint,
    RunResult,
    calibration_table,
    checkpoints_of,
    replayed,
    rows_of,
    score,
    scores,
)


def _answer(at: float, completed: int, basis: str = "measured", eta: float = 10.0) -> Answer:
    numbers = basis == "measured"
    return Answer(
        at=at,
        completed=completed,
        total=100,
        status="running",
        active_users=4,
        eta=eta if numbers else None,
        low=eta * 0.8 if numbers else None,
        high=eta * 1.2 if numbers else None,
        basis=basis,
    )


def _checkpoint(
    progress: int, actual: float, low: float | None, high: float | None, basis: str = "measured"
) -> Checkpoint:
    central = None if low is None or high is None else (low + high) / 2
    return Checkpoint("farm", 1, progress, progress, 0.0, 4, central, low, high, basis, actual)


def test_a_checkpoint_is_the_first_answer_at_or_past_its_share() -> None:
    answers = [_answer(t, completed) for t, completed in enumerate([0, 5, 9, 12, 20, 33, 100])]
    found = checkpoints_of(answers, done_at=10.0, farm="uniform", seed=3)

    assert [cp.progress for cp in found] == list(CHECKPOINTS)
    by_progress = {cp.progress: cp for cp in found}
    assert (by_progress[10].completed, by_progress[10].at) == (12, 3)
    assert (by_progress[20].completed, by_progress[20].at) == (20, 4)
    # One answer may stand for several checkpoints when the frames jumped past them.
    assert {by_progress[p].completed for p in (40, 50, 90)} == {100}
    assert by_progress[10].actual == pytest.approx(7.0)
    assert {cp.farm for cp in found} == {"uniform"}
    assert {cp.seed for cp in found} == {3}


def test_an_answer_without_numbers_is_a_miss() -> None:
    result = score(
        [
            _checkpoint(10, 5.0, None, None, basis="warming-up"),
            _checkpoint(20, 5.0, 4.0, 6.0),
            _checkpoint(30, 3.0, 4.0, 6.0),
            _checkpoint(40, 7.0, 4.0, 6.0),
            _checkpoint(50, 4.0, 4.0, 6.0),
        ]
    )
    assert (result.checkpoints, result.inside, result.below, result.above) == (5, 2, 1, 1)
    assert result.no_estimate == 1
    assert result.coverage == pytest.approx(0.4)
    # At 50 %: central 5.0 against an actual 4.0.
    assert result.median_error_50 == pytest.approx(0.25)
    assert result.mean_width == pytest.approx((2 / 5 + 2 / 3 + 2 / 7 + 2 / 4) / 4)


def test_the_calibration_table_and_rows_cover_each_farm_and_the_whole() -> None:
    runs = [
        RunResult(farm, seed, 100, 0.0, 10.0, 10.1, [_checkpoint(50, 5.0, 4.0, 6.0)], answers=50)
        for farm in ("uniform", "churn")
        for seed in (1, 2)
    ]
    results = scores(runs)
    assert list(results) == ["uniform", "churn", "overall"]

    table = calibration_table(results, runs)
    lines = table.splitlines()
    assert lines[0].startswith("| farm | runs | checkpoints | inside 80 % |")
    assert len(lines) == 2 + 3
    assert lines[2] == "| uniform | 2 | 2 | 2/2 (100 %) | 0 | 0 | 0 | 0 % | 0.40x |"
    assert lines[4].startswith("| **overall** | 4 | 4 | 4/4 (100 %) |")

    rows = rows_of(results, runs)
    assert [row.met for row in rows[:4]] == [True, True, True, True]
    assert all(row.benchmark == "eta" for row in rows)


def test_a_replay_is_scored_at_its_own_moment() -> None:
    keys = {"eta_seconds": 4.0, "eta_low_seconds": 3.5, "eta_high_seconds": 5.0}
    answered = _checkpoint(50, 5.0, 6.0, 8.0)
    answered.replay = {"at": 0.5, "fresh": {**keys, "eta_basis": "measured"}}

    [again] = replayed([answered], "fresh")

    assert (again.eta, again.low, again.high, again.basis) == (4.0, 3.5, 5.0, "measured")
    assert again.actual == pytest.approx(4.5)
    assert (answered.verdict, again.verdict) == ("below", "inside")
