from __future__ import annotations

import json
import logging

import fakeredis
import pytest

from supervisor import health
from supervisor.errors import PeerError
from supervisor.health import PeerHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(health.time, "monotonic", clock)
    return clock


def mark(redis: fakeredis.FakeRedis, peer: str) -> None:
    """What another process's failure_recorder leaves behind."""
    body = {"operation": "retrieve-temp", "status": 503, "since": 1}
    redis.set(f"supervisor:degraded:{peer}", json.dumps(body), ex=60)


def test_a_mark_set_elsewhere_shows_once_the_last_read_is_older_than_max_age(
    clock: Clock,
) -> None:
    redis = fakeredis.FakeRedis()
    peer_health = PeerHealth(redis, max_age=1.0)
    assert peer_health.degraded() == {}

    mark(redis, "blob-service")
    clock.now += 0.5
    assert peer_health.degraded() == {}, "read half a second ago: not asked again"
    clock.now += 0.5
    assert peer_health.degraded() == {
        "blob-service": {"operation": "retrieve-temp", "status": 503, "since": 1}
    }

    redis.delete("supervisor:degraded:blob-service")
    clock.now += 1.0
    assert peer_health.degraded() == {}, "an expired mark goes the same way"


def test_a_failure_recorded_by_this_process_shows_at_once(clock: Clock) -> None:
    redis = fakeredis.FakeRedis()
    peer_health = PeerHealth(redis, max_age=60.0)
    assert peer_health.degraded() == {}

    peer_health.record(PeerError("catalog", "get-blend-file", "boom", status=500))

    assert peer_health.degraded()["catalog"]["operation"] == "get-blend-file"
    assert peer_health.degraded()["catalog"]["status"] == 500


def test_the_answer_is_a_copy_the_caller_may_change(clock: Clock) -> None:
    redis = fakeredis.FakeRedis()
    mark(redis, "catalog")
    peer_health = PeerHealth(redis)
    peer_health.degraded().clear()
    assert set(peer_health.degraded()) == {"catalog"}


def test_an_unreachable_redis_reads_as_healthy_and_is_not_asked_on_every_poll(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    peer_health = PeerHealth(fakeredis.FakeRedis(server=server), max_age=1.0)

    with caplog.at_level(logging.WARNING, logger="supervisor.health"):
        answers = [peer_health.degraded() for _ in range(50)]

    assert answers == [{}] * 50
    assert [r.message for r in caplog.records] == ["could not read peer health"]
