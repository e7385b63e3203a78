"""supervisor.maintenance on the real Postgres: demand repeated, registrations after a stall,
and frames reclaimed from silent users."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from supervisor import maintenance, workloads
from supervisor.frames.pipeline import record_rendered_frame
from supervisor.models import UserState, Workload, WorkloadUser
from supervisor.services import Services
from supervisor.users import add_users
from tests.integration.helpers import PeerLog, drain_everything
from tests.integration.rendering import (
    assignments,
    demand,
    new_users,
    pending,
    rendered,
    user_row,
)
from tests.peers import Peers


def test_demand_users_repeats_an_unanswered_demand(
    sv: Services, peer_log: PeerLog, session_id: str
) -> None:
    peer_log.entries.clear()
    maintenance.demand_users(sv)
    assert peer_log.entries == [], "the last ask is fresh: nothing is sent"
    later = datetime.now(UTC) + timedelta(seconds=sv.settings.redemand_seconds + 1)

    assert maintenance.demand_users(sv, now=later) == {session_id: 2}

    assert demand(peer_log) == [
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 2}),
    ]
    assert sv.publisher.bodies[-1] == {
        "topic": "update-user-count",
        "supervisor-id": session_id,
        "data": {"user_count": 2},
    }


def test_demand_users_reports_only_the_demands_it_sent(
    sv: Services, peer_log: PeerLog, session_id: str
) -> None:
    peer_log.entries.clear()

    fresh = maintenance.demand_users(sv)

    assert peer_log.entries == []
    assert fresh == {}, "demand_users reports (and logs) a demand it did not send"


def test_demand_users_registers_again_only_when_the_workload_stalls(
    sv: Services, peer_log: PeerLog, session_id: str
) -> None:
    """The real User Manager lists a session once per new-session, so registrations are
    only made when it may have forgotten us, and each one gets its cleanup-session."""
    add_users(sv, new_users(session_id, "u1", "u2"))
    peer_log.entries.clear()
    assert maintenance.demand_users(sv) == {}
    assert peer_log.entries == []
    later = datetime.now(UTC) + timedelta(seconds=sv.settings.stall_seconds + 1)

    assert maintenance.demand_users(sv, now=later) == {}

    assert peer_log.user_manager() == [("new-session", {"user_count": 2})]
    assert maintenance.demand_users(sv, now=later) == {}
    assert len(peer_log.user_manager()) == 1, "registered once per stall"

    with sv.db.session() as session:
        registrations = session.get(Workload, session_id).registrations
    assert registrations == 2, "the start's and the stall's"
    with sv.db.transaction() as session:
        session.execute(
            update(Workload).values(
                rendered_frames=Workload.total_frames, recorded_frames=Workload.total_frames
            )
        )
    peer_log.entries.clear()
    workloads.complete_workloads(sv, [session_id])
    drain_everything(sv)
    cleanups = [entry for entry in peer_log.user_manager() if entry[0] == "cleanup-session"]
    assert len(cleanups) == 2, "one cleanup-session per registration"


def test_demand_users_asks_for_missing_users(sv: Services, session_id: str) -> None:
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(users_demanded=0, target_user_count=3))
    assert maintenance.demand_users(sv) == {session_id: 3}
    assert sv.publisher.bodies[-1]["data"] == {"user_count": 3}


def test_stale_frames_are_reclaimed_from_silent_users(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "quiet", "busy"))
    peers.acknowledge = True  # quiet's node answers the User Service, though it sends nothing
    busy_frame = min(n for n, u in assignments(sv, session_id).items() if u == "busy")
    record_rendered_frame(sv, rendered(session_id, "busy", busy_frame, peers))
    assert maintenance.reclaim_stale_frames(sv) == {}

    later = datetime.now(UTC) + timedelta(seconds=sv.settings.stale_frame_seconds + 1)
    with sv.db.transaction() as session:
        session.execute(
            update(WorkloadUser)
            .where(WorkloadUser.user_id == "busy")
            .values(last_seen_at=later - timedelta(seconds=1))
        )
    quiet_frames_before = [n for n, u in assignments(sv, session_id).items() if u == "quiet"]
    peer_log.entries.clear()
    reclaimed = maintenance.reclaim_stale_frames(sv, now=later)
    drain_everything(sv)

    assert reclaimed == {session_id: len(quiet_frames_before)}
    assert user_row(sv, session_id, "quiet").state == UserState.RELEASED
    assert "quiet" not in assignments(sv, session_id).values()
    assert set(quiet_frames_before) <= set(pending(sv, session_id))
    assert "user:quiet:stop-work" in peer_log.sequence()
    assert peer_log.user_manager() == [
        ("users-released", {"user_list": ["quiet"]}),
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 1}),
    ], "released first (the User Service still reaches it), then a replacement asked for"


def test_a_silent_user_the_user_service_cannot_reach_is_not_released(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    """A node gone, or back under a new id: releasing its old id would put a dead user in
    the User Manager's idle pool, to be handed to the next session."""
    add_users(sv, new_users(session_id, "gone"))
    gone_frames = sorted(assignments(sv, session_id))
    later = datetime.now(UTC) + timedelta(seconds=sv.settings.stale_frame_seconds + 1)
    # No node "gone" is connected: the User Service answers the call 500, as the real one.
    peer_log.entries.clear()

    reclaimed = maintenance.reclaim_stale_frames(sv, now=later)
    drain_everything(sv)

    assert reclaimed == {session_id: len(gone_frames)}
    [probe] = peers.calls("/send-msg-to-user-with-acknowledgement")
    assert json.loads(probe.body)["topic"] == "retrieve-frame"
    assert json.loads(probe.body)["data"]["frame-number"] == gone_frames[0]
    assert user_row(sv, session_id, "gone").state == UserState.DISCONNECTED
    assert set(gone_frames) <= set(pending(sv, session_id))
    assert "users-released" not in peer_log.user_manager_topics()
    assert "user:gone:stop-work" not in peer_log.sequence()
    assert peer_log.user_manager() == [
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 2}),
    ]
