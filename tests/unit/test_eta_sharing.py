"""The progress route's ETA: one Redis read per workload and second in a process."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.snapshots import Snapshot
from supervisor.workloads import estimates


@pytest.fixture
def redis(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The keys read from Redis, and the clock (`now`) the ETA is read at."""
    reads: list[str] = []
    clock = SimpleNamespace(now=1000.0, reads=reads)

    def shared(_client: Any, key: str, _compute: Any) -> Snapshot:
        reads.append(key)
        keys = {"eta_seconds": 30.0, "eta_low_seconds": 20.0, "eta_high_seconds": 40.0}
        return Snapshot.of({"computed_at": clock.now, "keys": keys})

    monkeypatch.setattr(estimates, "shared", shared)
    monkeypatch.setattr(estimates.time, "time", lambda: clock.now)
    monkeypatch.setattr(estimates, "_fresh_here", {})
    return clock


def test_an_answer_under_a_second_old_is_answered_again_without_redis(
    redis: SimpleNamespace,
) -> None:
    sv = SimpleNamespace(redis=None)
    first = estimates.shared_eta(sv, "w1", "running")  # type: ignore[arg-type]
    redis.now += 0.5
    again = estimates.shared_eta(sv, "w1", "running")  # type: ignore[arg-type]

    assert redis.reads == ["supervisor:eta:w1"]
    assert first["eta_seconds"] == 30.0
    assert again["eta_seconds"] == 29.5, "a kept answer is aged like Redis's"


def test_an_answer_a_second_old_is_read_again(redis: SimpleNamespace) -> None:
    sv = SimpleNamespace(redis=None)
    estimates.shared_eta(sv, "w1", "running")  # type: ignore[arg-type]
    estimates.shared_eta(sv, "w2", "running")  # type: ignore[arg-type]
    redis.now += 1.0
    estimates.shared_eta(sv, "w1", "running")  # type: ignore[arg-type]

    assert redis.reads == ["supervisor:eta:w1", "supervisor:eta:w2", "supervisor:eta:w1"]


def test_the_copies_kept_stay_few(redis: SimpleNamespace) -> None:
    sv = SimpleNamespace(redis=None)
    for index in range(estimates._KEPT_HERE_MAX):
        estimates.shared_eta(sv, f"old-{index}", "running")  # type: ignore[arg-type]
    redis.now += 2.0
    estimates.shared_eta(sv, "new", "running")  # type: ignore[arg-type]

    assert list(estimates._fresh_here) == ["new"]
    assert json.dumps(estimates._fresh_here["new"]["keys"])
