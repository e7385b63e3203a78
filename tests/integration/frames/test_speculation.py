"""Speculative second renders on the real Postgres (supervisor.frames.speculation): a frame
held too long goes to an idle user as well, the first upload wins, the other holder is told
to drop it, and the budget holds. Frames 10..20; u1 and u2 are left holding one frame each."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from supervisor import maintenance
from supervisor.frames.pipeline import record_rendered_frame
from supervisor.messages import UserDisconnected
from supervisor.models import Frame, WorkloadEvent
from supervisor.services import Services
from supervisor.users import add_users, user_disconnected
from tests.integration.rendering import (
    add_idle_user,
    assignments,
    frame,
    lists_sent,
    new_users,
    rendered,
    user_row,
    workload,
)
from tests.peers import Peers

MEASURED = {"pace_seconds": 1.0, "pace_samples": 5}


def one_frame_each(sv: Services, session_id: str, peers: Peers) -> None:
    """u1 holds 10 and has rendered it for 5 s (pace 1 s); u2 holds 16, just begun."""
    add_users(sv, new_users(session_id, "u1", "u2"))
    for number in (*range(11, 16), *range(17, 21)):
        holder = "u1" if number < 16 else "u2"
        assert record_rendered_frame(sv, rendered(session_id, holder, number, peers)) == "stored"
    assert assignments(sv, session_id) == {10: "u1", 16: "u2"}
    with sv.db.transaction() as session:
        session.execute(
            text(
                "UPDATE workload_users SET pace_seconds = 1.0, pace_samples = 5, "
                "clock_from_list = false, clock_at = now() - CASE user_id "
                "WHEN 'u1' THEN interval '5 seconds' ELSE interval '0 seconds' END "
                "WHERE workload_id = :w"
            ),
            {"w": session_id},
        )


def messages_to(peers: Peers, user: str) -> list[tuple[str, dict]]:
    return [
        (r.json()["topic"], r.json()["data"])
        for r in peers.calls("/user/send-msg-to-user")
        if r.json()["user_id"] == user
    ]


def test_an_idle_user_renders_the_overdue_frame_too_and_its_upload_wins(
    sv: Services, session_id: str, peers: Peers
) -> None:
    one_frame_each(sv, session_id, peers)
    add_idle_user(sv, session_id, "idle", clock_at=None, **MEASURED)

    assert maintenance.rebalance(sv) == {session_id: {"idle": 1}}

    row = frame(sv, session_id, 10)
    assert (row.user_id, row.backup_user_id) == ("u1", "idle")
    assert workload(sv, session_id).speculative_renders == 1
    assert lists_sent(peers)[-1]["user_id"] == "idle"
    assert lists_sent(peers)[-1]["data"]["frame_list"] == [10]

    sent_before = len(messages_to(peers, "u1"))
    assert record_rendered_frame(sv, rendered(session_id, "idle", 10, peers)) == "stored"
    assert messages_to(peers, "u1")[sent_before:] == [("stop-work", {})]
    assert record_rendered_frame(sv, rendered(session_id, "u1", 10, peers)) == "duplicate"
    assert [key for key in peers.stored if key.endswith("/010.png")] == ["cust-1/obj-1/010.png"]
    assert user_row(sv, session_id, "u1").failed_frames == 0, "losing a race costs nothing"
    with sv.db.session() as session:
        kinds = session.scalars(
            select(WorkloadEvent.kind).where(WorkloadEvent.workload_id == session_id)
        ).all()
    assert "frame-duplicated" in kinds


def test_when_the_holder_wins_the_second_holder_is_stopped(
    sv: Services, session_id: str, peers: Peers
) -> None:
    one_frame_each(sv, session_id, peers)
    add_idle_user(sv, session_id, "idle", clock_at=None, **MEASURED)
    maintenance.rebalance(sv)

    assert record_rendered_frame(sv, rendered(session_id, "u1", 10, peers)) == "stored"

    assert messages_to(peers, "idle")[-1] == ("stop-work", {})
    assert user_row(sv, session_id, "idle").failed_frames == 0


def test_the_budget_caps_second_renders(sv: Services, session_id: str, peers: Peers) -> None:
    """10 % of 11 frames is one second render: u2's frame, overdue too, gets none."""
    one_frame_each(sv, session_id, peers)
    with sv.db.transaction() as session:
        session.execute(text("UPDATE workload_users SET clock_at = now() - interval '9 seconds'"))
    add_idle_user(sv, session_id, "idle-a", clock_at=None, **MEASURED)
    add_idle_user(sv, session_id, "idle-b", clock_at=None, **MEASURED)

    assert maintenance.rebalance(sv) == {session_id: {"idle-a": 1}}
    with sv.db.session() as session:
        doubled = session.scalars(
            select(Frame.number).where(
                Frame.workload_id == session_id, Frame.backup_user_id.is_not(None)
            )
        ).all()
    assert doubled == [10]


def test_no_second_render_without_a_straggler_or_with_speculation_off(
    sv: Services, session_id: str, peers: Peers
) -> None:
    one_frame_each(sv, session_id, peers)
    with sv.db.transaction() as session:
        session.execute(text("UPDATE workload_users SET clock_at = now()"))
    add_idle_user(sv, session_id, "idle", clock_at=None, **MEASURED)
    assert maintenance.rebalance(sv) == {}

    with sv.db.transaction() as session:
        session.execute(text("UPDATE workload_users SET clock_at = now() - interval '9 seconds'"))
    sv.settings.speculative_extra_percent = 0
    assert maintenance.rebalance(sv) == {}


@pytest.mark.parametrize(
    ("leaver", "holder"),
    [("u1", "idle"), ("idle", "u1")],
    ids=["a holder that leaves hands it to its second", "a second holder that leaves"],
)
def test_when_one_of_two_holders_leaves_the_other_keeps_the_frame(
    sv: Services, session_id: str, peers: Peers, leaver: str, holder: str
) -> None:
    one_frame_each(sv, session_id, peers)
    add_idle_user(sv, session_id, "idle", clock_at=None, **MEASURED)
    maintenance.rebalance(sv)

    user_disconnected(sv, UserDisconnected(session_id, user_id=leaver))

    row = frame(sv, session_id, 10)
    assert (row.state, row.user_id, row.backup_user_id) == ("assigned", holder, None)


def test_in_the_endgame_a_user_far_slower_than_the_farm_takes_no_list_tails(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    with sv.db.transaction() as session:
        session.execute(text("UPDATE workload_users SET pace_seconds = 1.0, pace_samples = 5"))
    add_idle_user(sv, session_id, "snail", pace_seconds=10.0, pace_samples=5)

    assert maintenance.rebalance(sv) == {}

    add_idle_user(sv, session_id, "quick", **MEASURED)
    assert maintenance.rebalance(sv) == {session_id: {"quick": 3}}
