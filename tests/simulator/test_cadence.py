"""A simulated user renders at its own rate: the simulator's cost of making and announcing
a frame does not slow the farm it plays, and a user back from idle starts from now."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from simulator import users as users_module
from simulator.config import SimulatorConfig
from simulator.users import SimUser, UserPool


class RecordingScheduler:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.delays.append(round(delay, 6))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(users_module.time, "monotonic", lambda: now[0])
    return now


def pool_with(scheduler: RecordingScheduler) -> UserPool:
    pool = UserPool.__new__(UserPool)
    pool._config = SimulatorConfig(frame_time=0.1, jitter=0.0)
    pool._scheduler = scheduler  # type: ignore[assignment]
    return pool


def next_frame(pool: UserPool, user: SimUser, *, going_on: bool) -> None:
    user.busy = False
    user.queue.append(1)
    pool._schedule(user, going_on=going_on)


def test_a_user_going_on_keeps_its_rhythm_whatever_the_frame_cost(clock: list[float]) -> None:
    scheduler = RecordingScheduler()
    pool = pool_with(scheduler)
    user = SimUser("u1", random.Random(1))

    next_frame(pool, user, going_on=False)  # due at 100.1
    clock[0] = 100.13  # the frame took 30 ms of the simulator's own time
    next_frame(pool, user, going_on=True)  # due at 100.2, not 100.23
    clock[0] = 100.5  # far behind: at most one frame is caught up
    next_frame(pool, user, going_on=True)
    clock[0] = 101.0  # a new list after idling starts from now
    next_frame(pool, user, going_on=False)

    assert scheduler.delays == [0.1, 0.07, 0.0, 0.1]
