"""Shuffled delivery: with `reorder`, every copy of every event to SESSION_SUPERVISOR_EXCHANGE
is sent after its own random delay in [0, reorder], on the shared scheduler."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from simulator import Simulator
from simulator.amqp import EventPublisher
from tests.simulator.helpers import Supervisor, Tap

REORDER = 0.2


class FakeScheduler:
    """Records `call_later` calls; the test runs them."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.calls.append((delay, fn))

    def run_all(self) -> None:
        calls, self.calls = sorted(self.calls, key=lambda call: call[0]), []
        for _, fn in calls:
            fn()


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., tuple[EventPublisher, FakeScheduler]]]:
    made: list[EventPublisher] = []

    def make(**knobs: Any) -> tuple[EventPublisher, FakeScheduler]:
        scheduler = FakeScheduler()
        publisher = EventPublisher("memory://", scheduler=scheduler, **knobs)
        made.append(publisher)
        return publisher, scheduler

    yield make
    for publisher in made:
        publisher.close()


def test_each_copy_waits_its_own_delay_within_reorder(make_publisher: Callable) -> None:
    publisher, scheduler = make_publisher(reorder=REORDER, duplicate=1.0, seed=4)
    for frame in range(10):
        assert publisher.publish("s", "user-frame-rendered", {"frame-number": frame})
    delays = [delay for delay, _ in scheduler.calls]
    assert len(delays) == 20
    assert all(0.0 <= delay <= REORDER for delay in delays)
    assert len(set(delays)) == 20
    assert publisher.stats()["published"] == {}  # nothing goes out before its time

    scheduler.run_all()
    stats = publisher.stats()
    assert stats["published"] == {"user-frame-rendered": 20}
    assert stats["duplicates"] == 10
    sent = [event["body"]["data"]["frame-number"] for event in stats["recent"]]
    assert Counter(sent) == dict.fromkeys(range(10), 2)
    assert sent != sorted(sent)

    again, again_scheduler = make_publisher(reorder=REORDER, duplicate=1.0, seed=4)
    for frame in range(10):
        again.publish("s", "user-frame-rendered", {"frame-number": frame})
    assert [delay for delay, _ in again_scheduler.calls] == delays


def test_without_reorder_events_go_out_at_once(make_publisher: Callable) -> None:
    publisher, scheduler = make_publisher(duplicate=1.0, seed=4)
    assert publisher.publish("s", "new-users", {"user_list": ["u"]})
    assert scheduler.calls == []
    assert publisher.stats()["published"] == {"new-users": 2}


def test_a_delayed_event_that_cannot_be_sent_reports_it(
    make_publisher: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, scheduler = make_publisher(reorder=REORDER, duplicate=1.0, seed=1)
    failures: list[str] = []
    publisher.publish("s", "new-users", {"user_list": []}, on_failure=lambda: failures.append("x"))
    monkeypatch.setattr(publisher, "_send", lambda *args: False)
    scheduler.run_all()
    assert failures == ["x"]  # once, after both copies failed

    outcomes = iter([False, True])
    monkeypatch.setattr(publisher, "_send", lambda *args: next(outcomes))
    publisher.publish("s", "new-users", {"user_list": []}, on_failure=lambda: failures.append("y"))
    scheduler.run_all()
    assert failures == ["x"]  # one copy went out: the session heard of it


def test_reorder_needs_a_scheduler() -> None:
    with pytest.raises(ValueError, match="scheduler"):
        EventPublisher("memory://", reorder=0.1)


@pytest.mark.rabbitmq
def test_events_and_duplicates_arrive_shuffled_each_exactly_twice(
    rabbit_sim: Callable[..., Simulator],
    supervisor_for: Callable[[Simulator], Supervisor],
    tap: Tap,
) -> None:
    sim = rabbit_sim(reorder=REORDER, duplicate=1.0, seed=21, users=1, peer_mode="ideal")
    sv = supervisor_for(sim)
    sv.register(1)
    sv.demand("more-users", {"user_count": 1})
    first, second = tap.collect(2)
    assert first.body == second.body
    [user] = first.body["data"]["user_list"]
    frames = list(range(1, 9))
    response = sv.send(user, "start-rendering", {"blend_file_hash": "h", "frame_list": frames})
    assert response.status_code == 200

    arrived = [message.body for message in tap.collect(2 * (len(frames) + 1), timeout=5)]
    assert tap.quiet(REORDER + 0.1) == []
    keys = [json.dumps(body, sort_keys=True) for body in arrived]
    assert set(Counter(keys).values()) == {2}
    labels = [body["data"].get("frame-number", "done") for body in arrived]
    published_order = [*frames, "done"]
    assert labels != [label for label in published_order for _ in range(2)]
    first_arrivals = list(dict.fromkeys(labels))
    assert sorted(first_arrivals, key=published_order.index) == published_order
    assert first_arrivals != published_order
    assert sim.state()["published_duplicates"] == len(frames) + 2
