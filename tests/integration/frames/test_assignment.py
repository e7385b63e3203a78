"""supervisor.frames.assignment on the real Postgres: lists as users arrive and finish, fair
shares by measured rate, and the list tails moved to idle users (maintenance.rebalance)."""

from __future__ import annotations

from sqlalchemy import update

from supervisor import inbox, maintenance
from supervisor.frames.pipeline import record_rendered_frame
from supervisor.models import Frame, FrameState, Workload
from supervisor.services import Services
from supervisor.users import add_users
from tests.integration.rendering import (
    add_idle_user,
    assignments,
    by_user,
    frame,
    frame_image,
    lists_sent,
    new_users,
    pending,
    rendered,
    workload,
)
from tests.peers import Peers


def test_new_users_get_contiguous_runs(sv: Services, session_id: str, peers: Peers) -> None:
    result = add_users(sv, new_users(session_id, "u1", "u2"))

    assert result["added"] == 2
    assert by_user(lists_sent(peers)) == [
        {
            "user_id": "u1",
            "topic": "start-rendering",
            "data": {
                "blend_file_hash": peers.blend_hash("cust-1", "obj-1"),
                "frame_list": [10, 11, 12, 13, 14, 15],
            },
        },
        {
            "user_id": "u2",
            "topic": "start-rendering",
            "data": {
                "blend_file_hash": peers.blend_hash("cust-1", "obj-1"),
                "frame_list": [16, 17, 18, 19, 20],
            },
        },
    ]
    assert workload(sv, session_id).users_demanded == 0


def test_late_user_takes_part_of_the_remaining_work(
    sv: Services, session_id: str, peers: Peers
) -> None:
    sv.settings.max_frames_per_assignment = 3
    add_users(sv, new_users(session_id, "u1"))
    assert sorted(assignments(sv, session_id)) == [10, 11, 12]
    add_users(sv, new_users(session_id, "u2"))
    assert assignments(sv, session_id) == {
        10: "u1",
        11: "u1",
        12: "u1",
        13: "u2",
        14: "u2",
        15: "u2",
    }


def test_the_first_user_leaves_the_expected_users_their_share(
    sv: Services, session_id: str, peers: Peers
) -> None:
    """11 frames, 2 users expected: the first to arrive takes its half, not everything."""
    add_users(sv, new_users(session_id, "u1"))

    assert assignments(sv, session_id) == {n: "u1" for n in range(10, 16)}
    assert pending(sv, session_id) == [16, 17, 18, 19, 20]


def test_runs_cut_around_frames_that_are_not_pending_assign_only_pending_frames(
    sv: Services, session_id: str, peers: Peers
) -> None:
    sv.settings.max_frames_per_assignment = 3
    with sv.db.transaction() as session:
        session.execute(
            update(Frame)
            .where(Frame.workload_id == session_id, Frame.number.in_([11, 13]))
            .values(state=FrameState.RENDERED)
        )
        session.execute(update(Workload).where(Workload.id == session_id).values(rendered_frames=2))

    add_users(sv, new_users(session_id, "u1", "u2"))

    assert assignments(sv, session_id) == {
        10: "u1",
        12: "u1",
        14: "u1",
        15: "u2",
        16: "u2",
        17: "u2",
    }
    sent = {m["user_id"]: m["data"]["frame_list"] for m in lists_sent(peers)}
    assert sent == {"u1": [10, 12, 14], "u2": [15, 16, 17]}


def test_a_user_whose_list_is_all_in_gets_its_next_list_at_once(
    sv: Services, session_id: str, peers: Peers
) -> None:
    sv.settings.max_frames_per_assignment = 2
    add_users(sv, new_users(session_id, "u1"))

    record_rendered_frame(sv, rendered(session_id, "u1", 10, peers))
    assert [m["data"]["frame_list"] for m in lists_sent(peers)] == [[10, 11]]

    record_rendered_frame(sv, rendered(session_id, "u1", 11, peers))

    assert [m["data"]["frame_list"] for m in lists_sent(peers)] == [[10, 11], [12, 13]]
    assert assignments(sv, session_id) == {12: "u1", 13: "u1"}


def test_list_sizes_follow_measured_rates_and_leave_room_for_expected_users(
    sv: Services, session_id: str, peers: Peers
) -> None:
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(target_user_count=3))
    add_idle_user(sv, session_id, "fast", frames_done=4, busy_seconds=1.0)
    add_idle_user(sv, session_id, "slow", frames_done=1, busy_seconds=1.0)

    moved = maintenance.rebalance(sv)

    # 11 unassigned; rates 4 and 1, one user expected at the mean 2.5: 11*4/7.5, 11*1/7.5
    assert moved == {session_id: {"fast": 6, "slow": 2}}
    assert assignments(sv, session_id) == {
        **{n: "fast" for n in range(10, 16)},
        **{n: "slow" for n in (16, 17)},
    }
    assert pending(sv, session_id) == [18, 19, 20]


def test_a_user_without_a_rate_counts_at_the_mean(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_idle_user(sv, session_id, "known", frames_done=3, busy_seconds=1.0)
    add_idle_user(sv, session_id, "new")

    moved = maintenance.rebalance(sv)

    assert moved == {session_id: {"known": 6, "new": 5}}


def test_rebalance_gives_an_idle_user_its_share_of_the_unassigned_frames(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    add_idle_user(sv, session_id, "idle")

    moved = maintenance.rebalance(sv)

    assert moved == {session_id: {"idle": 3}}
    assert assignments(sv, session_id) == {
        **{n: "u1" for n in range(10, 16)},
        **{n: "idle" for n in range(16, 19)},
    }
    assert pending(sv, session_id) == [19, 20]
    assert lists_sent(peers)[1:] == [
        {
            "user_id": "idle",
            "topic": "start-rendering",
            "data": {
                "blend_file_hash": peers.blend_hash("cust-1", "obj-1"),
                "frame_list": [16, 17, 18],
            },
        }
    ], "u1 holds frames: it gets no new list"


def test_rebalance_moves_the_tail_of_the_longest_list_when_nothing_is_unassigned(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    add_idle_user(sv, session_id, "idle")

    moved = maintenance.rebalance(sv)

    assert moved == {session_id: {"idle": 3}}
    assert assignments(sv, session_id) == {
        **{n: "u1" for n in range(10, 13)},
        **{n: "idle" for n in range(13, 16)},
        **{n: "u2" for n in range(16, 21)},
    }
    assert lists_sent(peers)[2:] == [
        {
            "user_id": "idle",
            "topic": "start-rendering",
            "data": {
                "blend_file_hash": peers.blend_hash("cust-1", "obj-1"),
                "frame_list": [13, 14, 15],
            },
        }
    ], "the donor is not sent a new list"
    assert frame(sv, session_id, 13).attempts == 2

    # the donor may still be rendering the moved frames: its upload wins
    assert record_rendered_frame(sv, rendered(session_id, "u1", 13, peers)) == ("stored")
    late = rendered(session_id, "idle", 13, peers)
    assert record_rendered_frame(sv, late) == "duplicate"
    assert peers.stored == {"cust-1/obj-1/013.png": frame_image(13, "u1")}


def test_a_steal_leaves_frames_whose_upload_waits_in_the_inbox(
    sv: Services, session_id: str, peers: Peers
) -> None:
    """u1 has uploaded 13-15 but the events wait behind a slow intake: moving them would
    render them twice, so the tail comes from u2 instead."""
    add_users(sv, new_users(session_id, "u1", "u2"))
    add_idle_user(sv, session_id, "idle")
    inbox.record_many(sv.db, [rendered(session_id, "u1", n, peers) for n in (13, 14, 15)])

    moved = maintenance.rebalance(sv)

    assert moved == {session_id: {"idle": 2}}
    assert assignments(sv, session_id) == {
        **{n: "u1" for n in range(10, 16)},
        **{n: "u2" for n in range(16, 19)},
        19: "idle",
        20: "idle",
    }
