"""tasks.frames_rendered: a batch's events are settled, refused or retried alone."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from supervisor import inbox
from supervisor.models import InboxEvent
from supervisor.refusals import REFUSED_COUNTER
from supervisor.services import Services
from supervisor.users import add_users
from supervisor.workloads import start_workload
from tasks import event_tasks
from tests.integration.rendering import fail_copies_of_frame, new_users, rendered, small_blend
from tests.peers import Peers


@pytest.fixture
def session_id(sv: Services, peers: Peers) -> str:
    peers.add_object("cust-1", "obj-1", small_blend())
    workload_id = start_workload(sv, "cust-1", "obj-1")
    add_users(sv, new_users(workload_id, "u1"))
    return workload_id


def test_a_batch_stores_refuses_and_retries_alone_what_it_cannot_settle(
    sv: Services, session_id: str, peers: Peers, monkeypatch: Any
) -> None:
    sv.redis.delete(REFUSED_COUNTER)
    batch = [
        rendered(session_id, "u1", 10, peers),
        rendered(session_id, "u1", 11, peers),
        rendered(session_id, "stranger", 12, peers),
    ]
    ids = inbox.record_many(sv.db, batch)
    fail_copies_of_frame(sv, 11)
    retried: list[list[int]] = []
    monkeypatch.setattr(event_tasks.frames_rendered.app, "services", sv, raising=False)
    monkeypatch.setattr(
        event_tasks.frame_rendered, "apply_async", lambda args, **_: retried.append(args)
    )

    counts = event_tasks.frames_rendered(ids)

    assert counts == {"stored": 1, "retried-alone": 1, "refused": 1}
    assert retried == [[ids[1]]]
    with sv.db.session() as session:
        left = session.execute(select(InboxEvent.id, InboxEvent.last_error)).all()
    assert [row.id for row in left] == [ids[1]], "only the retried event stays in the inbox"
    assert "down" in (left[0].last_error or "")
    assert sv.redis.hget(REFUSED_COUNTER, "not-our-user") == b"1"
    assert event_tasks.frames_rendered(ids) == {"retried-alone": 1}, "a redelivery redoes nothing"
