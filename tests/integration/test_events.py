"""Each User Manager topic's handler on the real Postgres, delivered once, twice, and raced."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from supervisor import events, maintenance
from supervisor.errors import PeerError
from supervisor.intake import Event
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadUser
from supervisor.service import Supervisor
from supervisor.workloads import start_workload
from tests.conftest import FIXTURES
from tests.fakes import FakePeers

BLEND = FIXTURES / "blend/blender-5.0/range_10_20.blend"


@pytest.fixture
def session_id(supervisor: Supervisor, fake_peers: FakePeers) -> str:
    """A running workload of frames 10..20 (11 frames), no users yet."""
    fake_peers.add_object("cust-1", "obj-1", BLEND.read_bytes())
    return start_workload(supervisor, "cust-1", "obj-1")


def new_users(session_id: str, *users: str) -> Event:
    return Event("new-users", session_id, user_ids=users)


def rendered(sv_id: str, user: str, frame: int, fake_peers: FakePeers, key: str = "") -> Event:
    key = key or f"tmp/{user}/{frame}.png"
    fake_peers.temp_blobs[key] = f"image {frame} by {user}".encode()
    return Event(
        "user-frame-rendered",
        sv_id,
        user_id=user,
        frame_number=frame,
        extension="png",
        temp_key=key,
    )


def assignments(sv: Supervisor, session_id: str) -> dict[int, str | None]:
    with sv.db.session() as session:
        rows = session.execute(
            select(Frame.number, Frame.user_id).where(
                Frame.workload_id == session_id, Frame.state == FrameState.ASSIGNED
            )
        ).all()
    return dict(rows)


def workload(sv: Supervisor, session_id: str) -> Workload:
    with sv.db.session() as session:
        return session.get(Workload, session_id)


def lists_sent(fake_peers: FakePeers, topic: str = "start-rendering") -> list[dict]:
    return [
        r.json() for r in fake_peers.calls("/user/send-msg-to-user") if r.json()["topic"] == topic
    ]


def by_user(messages: list[dict]) -> list[dict]:
    """Messages to different users go out concurrently: only each user's own order holds."""
    return sorted(messages, key=lambda message: message["user_id"])


def fail_copies_of_frame(sv: Supervisor, frame: int) -> Callable[..., int]:
    """Make the Blob Service fail (transiently) every copy of `frame`'s upload; returns the
    real transfer, to put back."""
    copy = sv.peers.blob.transfer_temp_to_final

    def failing(**kwargs: Any) -> int:
        if kwargs["temp_key"].endswith(f"/{frame}.png"):
            raise PeerError("blob-service", "retrieve-temp", "down", status=503)
        return copy(**kwargs)

    sv.peers.blob.transfer_temp_to_final = failing  # type: ignore[method-assign]
    return copy


def render_all(sv: Supervisor, session_id: str, fake_peers: FakePeers) -> None:
    for number, user in sorted(assignments(sv, session_id).items()):
        events.record_rendered_frame(sv, rendered(session_id, user, number, fake_peers))


# --- new-users ------------------------------------------------------------------------


def test_new_users_get_contiguous_runs(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    result = events.add_users(supervisor, new_users(session_id, "u1", "u2"))

    assert result["added"] == 2
    assert by_user(lists_sent(fake_peers)) == [
        {
            "user_id": "u1",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "hash-obj-1", "frame_list": [10, 11, 12, 13, 14, 15]},
        },
        {
            "user_id": "u2",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "hash-obj-1", "frame_list": [16, 17, 18, 19, 20]},
        },
    ]
    assert workload(supervisor, session_id).users_demanded == 0


def test_new_users_delivered_twice_change_nothing(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    before = assignments(supervisor, session_id)
    second = events.add_users(supervisor, new_users(session_id, "u1", "u2"))

    assert second["added"] == 0
    assert assignments(supervisor, session_id) == before
    assert len(lists_sent(fake_peers)) == 2


def test_late_user_takes_part_of_the_remaining_work(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_frames_per_assignment = 3
    events.add_users(supervisor, new_users(session_id, "u1"))
    assert sorted(assignments(supervisor, session_id)) == [10, 11, 12]
    events.add_users(supervisor, new_users(session_id, "u2"))
    assert assignments(supervisor, session_id) == {
        10: "u1",
        11: "u1",
        12: "u1",
        13: "u2",
        14: "u2",
        15: "u2",
    }


# --- user-frame-rendered ---------------------------------------------------------------


def test_rendered_frame_is_stored_recorded_and_cleaned_once(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, fake_peers)

    assert events.record_rendered_frame(supervisor, event) == "stored"
    assert events.record_rendered_frame(supervisor, event) == "duplicate"

    assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u1"}
    records = [r.json() for r in fake_peers.calls("/add-rendered-image")]
    assert records == [
        {
            "objectId": "obj-1",
            "customerId": "cust-1",
            "frameNumber": 10,
            "imageFilePath": "cust-1/obj-1/010.png",
        }
    ]
    assert "tmp/u1/10.png" not in fake_peers.temp_blobs
    assert workload(supervisor, session_id).rendered_frames == 1


@pytest.mark.parametrize("change", ["frame moves to another user", "workload failed"])
def test_an_upload_overtaken_during_its_copy_is_removed_from_temp(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers, change: str
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, fake_peers)
    copy = supervisor.peers.blob.transfer_temp_to_final

    def copy_while_state_changes(**kwargs: Any) -> int:
        size = copy(**kwargs)
        with supervisor.db.transaction() as session:
            if change == "workload failed":
                session.execute(
                    update(Workload).where(Workload.id == session_id).values(status="failed")
                )
            else:
                session.execute(
                    update(Frame)
                    .where(Frame.workload_id == session_id, Frame.number == 10)
                    .values(user_id="u2")
                )
        return size

    supervisor.peers.blob.transfer_temp_to_final = copy_while_state_changes

    outcome = events.record_rendered_frame(supervisor, event)

    assert outcome == ("workload-ended" if change == "workload failed" else "duplicate")
    assert "tmp/u1/10.png" not in fake_peers.temp_blobs, "the overtaken upload was left behind"
    assert fake_peers.calls("/add-rendered-image") == []
    assert workload(supervisor, session_id).rendered_frames == 0


@pytest.mark.parametrize(
    ("user", "frame", "reason", "temp_removed"),
    [
        ("u2", 10, "frame-not-assigned-to-user", True),
        ("stranger", 10, "not-our-user", False),
        ("u1", 99, "frame-outside-workload", False),
    ],
)
def test_frames_that_do_not_fit_are_refused_without_effect(
    supervisor: Supervisor,
    session_id: str,
    fake_peers: FakePeers,
    user: str,
    frame: int,
    reason: str,
    temp_removed: bool,
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, user, frame, fake_peers)

    with pytest.raises(events.EventRefused) as refused:
        events.record_rendered_frame(supervisor, event)

    assert refused.value.reason == reason
    assert fake_peers.stored == {}
    assert workload(supervisor, session_id).rendered_frames == 0
    assert (event.temp_key not in fake_peers.temp_blobs) is temp_removed


def test_last_frame_completes_the_workload(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    render_all(supervisor, session_id, fake_peers)

    done = workload(supervisor, session_id)
    assert (done.status, done.rendered_frames, done.total_frames) == ("completed", 11, 11)
    assert sorted(fake_peers.stored) == [f"cust-1/obj-1/{n:03d}.png" for n in range(10, 21)]
    assert len(fake_peers.calls("/add-rendered-image")) == 11
    assert fake_peers.temp_blobs == {}
    stops = [m["user_id"] for m in lists_sent(fake_peers, "stop-work")]
    assert sorted(stops) == ["u1", "u2"], "one stop-work per user; users are independent"
    assert supervisor.publisher.topics()[-2:] == [
        "users-released",
        "remove-users-demand-completely",
    ]


def test_transient_transfer_failure_is_raised_for_retry(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 10, fake_peers)
    fake_peers.fail_next("/retrieve-temp", status=503, times=10)

    with pytest.raises(PeerError) as failure:
        events.record_rendered_frame(supervisor, event)

    assert failure.value.transient
    assert assignments(supervisor, session_id)[10] == "u1"
    fake_peers.failures.clear()
    assert events.record_rendered_frame(supervisor, event) == "stored"


def test_missing_temp_image_sends_the_frame_back_to_render(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_frames_per_assignment = 2
    events.add_users(supervisor, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 10, fake_peers)
    del fake_peers.temp_blobs[event.temp_key]

    assert events.record_rendered_frame(supervisor, event) == "requeued"

    with supervisor.db.session() as session:
        frame = session.get(Frame, (session_id, 10))
    assert (frame.state, frame.attempts) == (FrameState.ASSIGNED, 2), "assigned again"
    assert "retrieve-temp" in frame.last_error


# --- user-rendering-completed ----------------------------------------------------------


def test_completed_while_owing_frames_asks_for_them(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    events.record_rendered_frame(supervisor, rendered(session_id, "u1", 10, fake_peers))

    result = events.user_finished_list(
        supervisor, Event("user-rendering-completed", session_id, user_id="u1")
    )

    assert result["owed"] == [11, 12, 13, 14, 15]
    [ask] = lists_sent(fake_peers, "retrieve-frames-from-frame-list")
    assert ask == {
        "user_id": "u1",
        "topic": "retrieve-frames-from-frame-list",
        "data": {"blend_file_hash": "hash-obj-1", "frame_list": [11, 12, 13, 14, 15]},
    }


def test_completed_user_gets_more_work(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_frames_per_assignment = 2
    events.add_users(supervisor, new_users(session_id, "u1"))
    for frame in (10, 11):
        events.record_rendered_frame(supervisor, rendered(session_id, "u1", frame, fake_peers))

    result = events.user_finished_list(
        supervisor, Event("user-rendering-completed", session_id, user_id="u1")
    )

    assert result["assigned"] == {"u1": 2}
    assert lists_sent(fake_peers)[-1]["data"]["frame_list"] == [12, 13]


# --- user-disconnected -----------------------------------------------------------------


def test_disconnected_user_frames_go_to_the_others(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = Event("user-disconnected", session_id, user_id="u1")

    first = events.user_disconnected(supervisor, event)
    second = events.user_disconnected(supervisor, event)

    assert first["freed"] == 6
    assert second == {"ignored": True}
    assert set(assignments(supervisor, session_id).values()) == {"u2"}
    assert sorted(assignments(supervisor, session_id)) == list(range(10, 21))
    assert lists_sent(fake_peers)[-1]["data"]["frame_list"] == list(range(10, 21))


def test_last_user_leaving_demands_users(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    events.user_disconnected(supervisor, Event("user-disconnected", session_id, user_id="u1"))
    result = events.user_disconnected(
        supervisor, Event("user-disconnected", session_id, user_id="u2")
    )

    assert result["demanded"] == 2
    assert supervisor.publisher.bodies[-1] == {
        "topic": "more-users",
        "supervisor-id": session_id,
        "data": {"user_count": 2},
    }
    assert assignments(supervisor, session_id) == {}


# --- user-error-sending-frame ----------------------------------------------------------


def error_event(session_id: str, user: str, frame: int) -> Event:
    return Event(
        "user-error-sending-frame",
        session_id,
        user_id=user,
        frame_number=frame,
        blend_file_hash="hash-obj-1",
    )


def test_error_sending_frame_asks_the_user_with_acknowledgment(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))

    assert events.user_could_not_send(supervisor, error_event(session_id, "u1", 10)) == "retrying"

    [ask] = [r.json() for r in fake_peers.calls("/send-msg-to-user-with-acknowledgment")]
    assert ask == {
        "user_id": "u1",
        "topic": "retrieve-frame",
        "data": {"frame-number": 10, "blend-file-hash": "hash-obj-1"},
    }
    assert assignments(supervisor, session_id)[10] == "u1"


def test_lost_frames_are_rendered_again_and_a_failing_user_is_banned(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_user_failures = 2
    fake_peers.acknowledge = False
    events.add_users(supervisor, new_users(session_id, "bad", "good"))
    bad_frames = sorted(n for n, u in assignments(supervisor, session_id).items() if u == "bad")

    outcomes = [
        events.user_could_not_send(supervisor, error_event(session_id, "bad", frame))
        for frame in bad_frames[:3]
    ]

    assert outcomes == ["requeued", "requeued", "requeued"]
    with supervisor.db.session() as session:
        state = session.get(WorkloadUser, (session_id, "bad")).state
    assert state == UserState.BANNED
    assert set(assignments(supervisor, session_id).values()) == {"good"}
    assert len(assignments(supervisor, session_id)) == 11

    again = events.add_users(supervisor, new_users(session_id, "bad"))
    assert again["added"] == 0
    assert again["refused"] == ["bad"]
    assert supervisor.publisher.bodies[-1]["topic"] == "users-released"


# --- concurrency -------------------------------------------------------------------------


def run_together(*calls) -> list[object]:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # noqa: BLE001 (the test inspects what each racer got)
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_the_same_frame_event_raced_in_two_workers_counts_once(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 10, fake_peers)

    outcomes = run_together(*[lambda: events.record_rendered_frame(supervisor, event)] * 4)

    assert Counter(map(str, outcomes))["stored"] == 1
    assert workload(supervisor, session_id).rendered_frames == 1
    assert len(fake_peers.calls("/add-rendered-image")) == 1


def test_racing_new_users_never_share_a_frame(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    run_together(
        lambda: events.add_users(supervisor, new_users(session_id, "a1", "a2")),
        lambda: events.add_users(supervisor, new_users(session_id, "b1", "b2")),
        lambda: events.add_users(supervisor, new_users(session_id, "c1")),
    )

    last_list: dict[str, list[int]] = {}
    for message in lists_sent(fake_peers):  # in the order each user received them
        last_list[message["user_id"]] = message["data"]["frame_list"]
    final = assignments(supervisor, session_id)
    assert sorted(final) == list(range(10, 21))
    held: dict[str, list[int]] = {}
    for frame, user in sorted(final.items()):
        held.setdefault(str(user), []).append(frame)
    # Lists go to different users concurrently; what each user ends with must be its share.
    assert {user: frames for user, frames in last_list.items() if frames} == held


# --- beat --------------------------------------------------------------------------------


def test_demand_users_repeats_an_unanswered_demand(supervisor: Supervisor, session_id: str) -> None:
    assert maintenance.demand_users(supervisor) == {}
    later = datetime.now(UTC) + timedelta(seconds=supervisor.settings.redemand_seconds + 1)

    assert maintenance.demand_users(supervisor, now=later) == {session_id: 2}

    assert supervisor.publisher.bodies[-1] == {
        "topic": "update-user-count",
        "supervisor-id": session_id,
        "data": {"user_count": 2},
    }


def test_demand_users_asks_for_missing_users(supervisor: Supervisor, session_id: str) -> None:
    with supervisor.db.transaction() as session:
        session.execute(update(Workload).values(users_demanded=0, target_user_count=3))
    assert maintenance.demand_users(supervisor) == {session_id: 3}
    assert supervisor.publisher.bodies[-1]["data"] == {"user_count": 3}


def test_stale_frames_are_reclaimed_from_silent_users(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "quiet", "busy"))
    busy_frame = min(n for n, u in assignments(supervisor, session_id).items() if u == "busy")
    events.record_rendered_frame(supervisor, rendered(session_id, "busy", busy_frame, fake_peers))
    assert maintenance.reclaim_stale_frames(supervisor) == {}

    later = datetime.now(UTC) + timedelta(seconds=supervisor.settings.stale_frame_seconds + 1)
    with supervisor.db.transaction() as session:
        session.execute(
            update(WorkloadUser)
            .where(WorkloadUser.user_id == "busy")
            .values(last_seen_at=later - timedelta(seconds=1))
        )
    quiet_frames_before = [
        n for n, u in assignments(supervisor, session_id).items() if u == "quiet"
    ]
    reclaimed = maintenance.reclaim_stale_frames(supervisor, now=later)

    assert reclaimed == {session_id: len(quiet_frames_before)}
    with supervisor.db.session() as session:
        quiet = session.get(WorkloadUser, (session_id, "quiet"))
    assert quiet.failed_frames == 1
    assert "quiet" not in assignments(supervisor, session_id).values()


def test_rebalance_moves_unstarted_frames_to_an_idle_user(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    with supervisor.db.transaction() as session:
        session.add(WorkloadUser(workload_id=session_id, user_id="idle", state="active"))

    moved = maintenance.rebalance(supervisor)

    assert moved == {session_id: {"idle": 5}}
    assert assignments(supervisor, session_id) == {
        **{n: "u1" for n in range(10, 16)},
        **{n: "idle" for n in range(16, 21)},
    }
    assert by_user(lists_sent(fake_peers)[-2:]) == [
        {
            "user_id": "idle",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "hash-obj-1", "frame_list": [16, 17, 18, 19, 20]},
        },
        {
            "user_id": "u1",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "hash-obj-1", "frame_list": [10, 11, 12, 13, 14, 15]},
        },
    ]


def test_status_names_a_failing_peer_while_it_fails(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    from supervisor.workloads import workload_status

    assert "degraded_peers" not in workload_status(supervisor, "cust-1")
    events.add_users(supervisor, new_users(session_id, "u1"))
    fake_peers.fail_next("/retrieve-temp", status=503, times=10)
    with pytest.raises(PeerError):
        events.record_rendered_frame(supervisor, rendered(session_id, "u1", 10, fake_peers))

    degraded = workload_status(supervisor, "cust-1")["degraded_peers"]

    assert degraded["blob-service"]["operation"] == "retrieve-temp"
    assert degraded["blob-service"]["status"] == 503


def test_disconnect_of_a_user_that_is_not_ours_is_refused(
    supervisor: Supervisor, session_id: str
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    with pytest.raises(events.EventRefused) as refused:
        events.user_disconnected(supervisor, Event("user-disconnected", session_id, user_id="x"))
    assert refused.value.reason == "not-our-user"
    assert sorted(assignments(supervisor, session_id).values()) == ["u1"] * 11


def test_a_re_upload_of_a_rendered_frame_is_removed_and_changes_nothing(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    events.record_rendered_frame(supervisor, rendered(session_id, "u1", 10, fake_peers))
    again = rendered(session_id, "u1", 10, fake_peers, key="tmp/u1/10-again.png")

    assert events.record_rendered_frame(supervisor, again) == "duplicate"

    assert "tmp/u1/10-again.png" not in fake_peers.temp_blobs
    assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u1"}
    assert len(fake_peers.calls("/add-rendered-image")) == 1
    assert workload(supervisor, session_id).rendered_frames == 1


# --- batches -----------------------------------------------------------------------------


def test_a_batch_of_rendered_frames_has_the_single_path_outcomes(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    owner = assignments(supervisor, session_id)
    u1_frame = min(n for n, u in owner.items() if u == "u1")
    u2_frame = min(n for n, u in owner.items() if u == "u2")
    first = rendered(session_id, "u1", u1_frame, fake_peers)
    batch = [
        first,
        first,  # the same event twice in one batch
        rendered(session_id, "u1", u1_frame, fake_peers, key="tmp/u1/second-upload.png"),
        rendered(session_id, "u2", u2_frame, fake_peers),
        rendered(session_id, "u2", u1_frame, fake_peers, key="tmp/u2/not-mine.png"),
        rendered(session_id, "stranger", u1_frame, fake_peers),
        rendered(session_id, "u1", 99, fake_peers),
    ]

    outcomes = events.record_rendered_frames(supervisor, batch)

    assert outcomes[:4] == ["stored", "duplicate", "duplicate", "stored"]
    assert [o.reason for o in outcomes[4:]] == [  # type: ignore[union-attr]
        "frame-not-assigned-to-user",
        "not-our-user",
        "frame-outside-workload",
    ]
    assert sorted(fake_peers.stored) == sorted(
        f"cust-1/obj-1/{n:03d}.png" for n in (u1_frame, u2_frame)
    )
    records = sorted(r.json()["frameNumber"] for r in fake_peers.calls("/add-rendered-image"))
    assert records == sorted([u1_frame, u2_frame])
    assert workload(supervisor, session_id).rendered_frames == 2
    left = set(fake_peers.temp_blobs)
    uploads = {first.temp_key, "tmp/u1/second-upload.png", "tmp/u2/not-mine.png"}
    assert (uploads | {f"tmp/u2/{u2_frame}.png"}) & left == set()
    assert events.record_rendered_frames(supervisor, [first]) == ["duplicate"]


def test_a_batch_retries_only_the_upload_whose_copy_failed(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    batch = [rendered(session_id, "u1", n, fake_peers) for n in (10, 11, 12)]
    copy = fail_copies_of_frame(supervisor, 11)

    outcomes = events.record_rendered_frames(supervisor, batch)

    assert outcomes[0] == "stored"
    assert outcomes[2] == "stored"
    assert isinstance(outcomes[1], PeerError)
    assert outcomes[1].transient
    assert assignments(supervisor, session_id)[11] == "u1"
    assert "tmp/u1/11.png" in fake_peers.temp_blobs
    supervisor.peers.blob.transfer_temp_to_final = copy
    assert events.record_rendered_frame(supervisor, batch[1]) == "stored"


def test_runs_cut_around_frames_that_are_not_pending_assign_only_pending_frames(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_frames_per_assignment = 3
    with supervisor.db.transaction() as session:
        session.execute(
            update(Frame)
            .where(Frame.workload_id == session_id, Frame.number.in_([11, 13]))
            .values(state=FrameState.RENDERED)
        )
        session.execute(update(Workload).where(Workload.id == session_id).values(rendered_frames=2))

    events.add_users(supervisor, new_users(session_id, "u1", "u2"))

    assert assignments(supervisor, session_id) == {
        10: "u1",
        12: "u1",
        14: "u1",
        15: "u2",
        16: "u2",
        17: "u2",
    }
    sent = {m["user_id"]: m["data"]["frame_list"] for m in lists_sent(fake_peers)}
    assert sent == {"u1": [10, 12, 14], "u2": [15, 16, 17]}
