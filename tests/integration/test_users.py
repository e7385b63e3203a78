"""supervisor.users on the real Postgres: users joining, finishing, disconnecting and failing
to send a frame, delivered once, twice, and raced."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from supervisor.frames.pipeline import record_rendered_frame
from supervisor.messages import RenderingCompleted, UserDisconnected
from supervisor.models import UserState, Workload, WorkloadUser
from supervisor.refusals import Refused
from supervisor.services import Services
from supervisor.users import add_users, user_could_not_send, user_disconnected, user_finished_list
from supervisor.workloads import fail_workload, stop_and_delete
from tests.integration.helpers import PeerLog, drain_everything
from tests.integration.rendering import (
    add_idle_user,
    assignments,
    demand,
    error_event,
    frame,
    lists_sent,
    new_users,
    pending,
    render_all,
    rendered,
    run_together,
    user_row,
    workload,
)
from tests.peers import Peers

# --- new-users ------------------------------------------------------------------------


def test_new_users_delivered_twice_change_nothing(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    before = assignments(sv, session_id)
    second = add_users(sv, new_users(session_id, "u1", "u2"))

    assert second["added"] == 0
    assert assignments(sv, session_id) == before
    assert len(lists_sent(peers)) == 2


def test_a_new_users_that_leaves_users_missing_asks_for_the_rest_at_once(
    sv: Services, peer_log: PeerLog, session_id: str
) -> None:
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(target_user_count=4))
    peer_log.entries.clear()

    result = add_users(sv, new_users(session_id, "u1"))

    assert result["missing"] == 3
    assert demand(peer_log) == [("update-user-count", {"user_count": 3})], (
        "the whole missing count, at once (the User Manager forgot the rest)"
    )
    assert "more-users" not in peer_log.user_manager_topics()
    assert workload(sv, session_id).users_demanded == 3


def test_users_beyond_the_count_are_released_at_once(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    result = add_users(sv, new_users(session_id, "u1", "u2", "u3", "u4"))

    assert (result["added"], result["refused"]) == (2, ["u3", "u4"])
    assert ("users-released", {"user_list": ["u3", "u4"]}) in peer_log.user_manager()
    assert sorted(m["user_id"] for m in lists_sent(peers)) == ["u1", "u2"]
    assert set(assignments(sv, session_id).values()) == {"u1", "u2"}
    assert user_row(sv, session_id, "u3") is None
    assert user_row(sv, session_id, "u4") is None

    again = add_users(sv, new_users(session_id, "u5"))
    assert (again["added"], again["refused"]) == (0, ["u5"]), "the count is full"


@pytest.mark.parametrize("ending", ["completed", "failed", "stopped"])
def test_users_handed_to_an_ended_workload_are_returned(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers, ending: str
) -> None:
    if ending == "completed":
        add_users(sv, new_users(session_id, "u1", "u2"))
        render_all(sv, session_id, peers)
    elif ending == "failed":
        fail_workload(sv, session_id, "broken")
    else:
        stop_and_delete(sv, "cust-1")
    drain_everything(sv)
    assert workload(sv, session_id).status == ending
    peer_log.entries.clear()
    sent_before = len(lists_sent(peers))

    result = add_users(sv, new_users(session_id, "late1", "late2"))
    drain_everything(sv)

    assert result == {"added": 0, "returned": 2}
    um = peer_log.user_manager()
    assert um == [
        ("new-session", {"user_count": 0}),
        ("users-released", {"user_list": ["late1", "late2"]}),
        ("cleanup-session", {}),
    ], "registered again (the UM may have dropped us), released, cleaned up"
    sequence = peer_log.sequence()
    for late in ("late1", "late2"):
        stop = sequence.index(f"user:{late}:stop-work")
        assert stop < sequence.index("user-manager:users-released")
    assert len(lists_sent(peers)) == sent_before, "no work for late users"
    assert user_row(sv, session_id, "late1") is None


def test_a_filled_count_drops_the_demand_instead_of_asking_for_zero(
    sv: Services, peer_log: PeerLog, session_id: str
) -> None:
    """update-user-count 0 queues an empty demand at the real User Manager, which then
    sends an empty new-users."""
    add_users(sv, new_users(session_id, "u1"))
    peer_log.entries.clear()

    add_users(sv, new_users(session_id, "u2"))
    drain_everything(sv)

    assert peer_log.user_manager() == [
        ("remove-users-demand-completely", {"session_supervisor_id": session_id})
    ]
    assert workload(sv, session_id).users_demanded == 0


@pytest.mark.commits  # racing threads
def test_racing_new_users_never_share_a_frame(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    run_together(
        lambda: add_users(sv, new_users(session_id, "a1", "a2")),
        lambda: add_users(sv, new_users(session_id, "b1", "b2")),
        lambda: add_users(sv, new_users(session_id, "c1")),
    )

    last_list: dict[str, list[int]] = {}
    for message in lists_sent(peers):  # in the order each user received them
        last_list[message["user_id"]] = message["data"]["frame_list"]
    final = assignments(sv, session_id)
    held: dict[str, list[int]] = {}
    for number, holder in sorted(final.items()):
        held.setdefault(str(holder), []).append(number)
    # Lists go to different users concurrently; what each user ends with must be its share.
    assert {u: frames for u, frames in last_list.items() if frames} == held
    sent = [n for frames in last_list.values() for n in frames]
    assert len(sent) == len(set(sent)), "two users were sent the same frame"
    with sv.db.session() as session:
        active = set(
            session.scalars(
                select(WorkloadUser.user_id).where(
                    WorkloadUser.workload_id == session_id, WorkloadUser.state == UserState.ACTIVE
                )
            )
        )
    assert len(active) == 2, "never more users than the workload's count"
    assert set(held) == active
    released = {
        u
        for topic, data in peer_log.user_manager()
        if topic == "users-released"
        for u in data["user_list"]
    }
    assert released == {"a1", "a2", "b1", "b2", "c1"} - active, "the surplus went back"
    assert len(final) + len(pending(sv, session_id)) == 11


# --- user-rendering-completed ---------------------------------------------------------


def test_completed_while_owing_frames_asks_for_them(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    record_rendered_frame(sv, rendered(session_id, "u1", 10, peers))

    result = user_finished_list(sv, RenderingCompleted(session_id, user_id="u1"))

    assert result["owed"] == [11, 12, 13, 14, 15]
    [ask] = lists_sent(peers, "retrieve-frames-from-frame-list")
    assert ask == {
        "user_id": "u1",
        "topic": "retrieve-frames-from-frame-list",
        "data": {
            "blend_file_hash": peers.blend_hash("cust-1", "obj-1"),
            "frame_list": [11, 12, 13, 14, 15],
        },
    }


def test_completed_user_holding_nothing_gets_more_work(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    add_idle_user(sv, session_id, "idle")

    result = user_finished_list(sv, RenderingCompleted(session_id, user_id="idle"))

    assert result == {"owed": [], "assigned": {"idle": 3}}
    assert lists_sent(peers)[-1] == {
        "user_id": "idle",
        "topic": "start-rendering",
        "data": {
            "blend_file_hash": peers.blend_hash("cust-1", "obj-1"),
            "frame_list": [16, 17, 18],
        },
    }


# --- user-disconnected ----------------------------------------------------------------


def test_disconnected_user_frames_go_back_and_a_replacement_is_asked_for(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    peer_log.entries.clear()
    event = UserDisconnected(session_id, user_id="u1")

    first = user_disconnected(sv, event)
    second = user_disconnected(sv, event)

    assert (first["freed"], first["demanded"]) == (6, 1)
    assert second == {"ignored": True}
    assert assignments(sv, session_id) == {n: "u2" for n in range(16, 21)}
    assert pending(sv, session_id) == list(range(10, 16))
    assert len(lists_sent(peers)) == 2, "u2 holds frames: it is not topped up"
    assert demand(peer_log) == [("update-user-count", {"user_count": 1})], (
        "the User Manager knows us (it just sent an event): no new registration"
    )
    assert user_row(sv, session_id, "u1").state == UserState.DISCONNECTED

    add_users(sv, new_users(session_id, "u3"))

    assert lists_sent(peers)[-1]["user_id"] == "u3"
    assert lists_sent(peers)[-1]["data"]["frame_list"] == [10, 11, 12]


def test_last_user_leaving_demands_users(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    user_disconnected(sv, UserDisconnected(session_id, user_id="u1"))
    peer_log.entries.clear()
    result = user_disconnected(sv, UserDisconnected(session_id, user_id="u2"))

    assert result["demanded"] == 2
    assert demand(peer_log) == [("update-user-count", {"user_count": 2})]
    assert sv.publisher.bodies[-1] == {
        "topic": "update-user-count",
        "supervisor-id": session_id,
        "data": {"user_count": 2},
    }
    assert assignments(sv, session_id) == {}
    assert pending(sv, session_id) == list(range(10, 21))


def test_disconnect_of_a_user_that_is_not_ours_is_refused(sv: Services, session_id: str) -> None:
    add_users(sv, new_users(session_id, "u1"))
    before = assignments(sv, session_id)
    with pytest.raises(Refused) as refused:
        user_disconnected(sv, UserDisconnected(session_id, user_id="x"))
    assert refused.value.reason == "not-our-user"
    assert assignments(sv, session_id) == before == {n: "u1" for n in range(10, 16)}


# --- user-error-sending-frame (and the ban) -------------------------------------------


def test_error_sending_frame_asks_the_user_with_acknowledgement(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    peers.acknowledge = True  # u1's node still has the frame

    assert user_could_not_send(sv, error_event(session_id, "u1", 10)) == "retrying"

    [ask] = [r.json() for r in peers.calls("/send-msg-to-user-with-acknowledgement")]
    assert ask == {
        "user_id": "u1",
        "topic": "retrieve-frame",
        "data": {"frame-number": 10, "blend-file-hash": peers.blend_hash("cust-1", "obj-1")},
    }
    assert peers.calls("/send-msg-to-user-with-acknowledgment") == []
    assert assignments(sv, session_id)[10] == "u1"


def test_error_sending_frame_tries_the_other_spelling_once_on_404(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    peers.fail_next("/send-msg-to-user-with-acknowledgement", status=404, times=1)

    outcome = user_could_not_send(sv, error_event(session_id, "u1", 10))

    assert len(peers.calls("/send-msg-to-user-with-acknowledgement")) == 1
    [other] = peers.calls("/send-msg-to-user-with-acknowledgment")
    assert other.json()["topic"] == "retrieve-frame"
    assert outcome == "requeued", "the real User Service has no such route: not acknowledged"


def test_lost_frames_are_rendered_again_and_a_failing_user_is_banned(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    sv.settings.max_user_failures = 2
    peers.acknowledge = False
    add_users(sv, new_users(session_id, "bad", "good"))
    bad_frames = sorted(n for n, u in assignments(sv, session_id).items() if u == "bad")

    outcomes = [
        user_could_not_send(sv, error_event(session_id, "bad", frame)) for frame in bad_frames[:3]
    ]

    drain_everything(sv)

    assert outcomes == ["requeued", "requeued", "requeued"]
    assert user_row(sv, session_id, "bad").state == UserState.BANNED
    assert assignments(sv, session_id) == {n: "good" for n in range(16, 21)}
    assert pending(sv, session_id) == bad_frames
    assert frame(sv, session_id, bad_frames[0]).last_error == "user no longer has the frame"
    assert "user:bad:stop-work" in peer_log.sequence()
    assert ("users-released", {"user_list": ["bad"]}) in peer_log.user_manager()
    peer_log.entries.clear()

    again = add_users(sv, new_users(session_id, "bad"))
    assert again["added"] == 0
    assert again["refused"] == ["bad"]
    assert peer_log.user_manager() == [
        ("users-released", {"user_list": ["bad"]}),
        ("update-user-count", {"user_count": 1}),
    ], "still banned: released at once, and a replacement is asked for"
