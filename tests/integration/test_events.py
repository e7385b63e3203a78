"""Each User Manager topic's handler on the real Postgres, delivered once, twice, and raced."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from supervisor import events, inbox, maintenance, workloads
from supervisor.errors import PeerError
from supervisor.intake import Event
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadUser
from supervisor.service import Supervisor
from supervisor.workloads import fail_workload, start_workload, stop_and_delete, workload_status
from tests.conftest import FIXTURES
from tests.fakes import FakePeers
from tests.integration.conftest import PeerLog
from tests.integration.helpers import drain_everything, pending_outbox

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


def pending(sv: Supervisor, session_id: str) -> list[int]:
    with sv.db.session() as session:
        return list(
            session.scalars(
                select(Frame.number)
                .where(Frame.workload_id == session_id, Frame.state == FrameState.PENDING)
                .order_by(Frame.number)
            )
        )


def frame(sv: Supervisor, session_id: str, number: int) -> Frame:
    with sv.db.session() as session:
        return session.get(Frame, (session_id, number))


def user_row(sv: Supervisor, session_id: str, user_id: str) -> WorkloadUser | None:
    with sv.db.session() as session:
        return session.get(WorkloadUser, (session_id, user_id))


def add_idle_user(sv: Supervisor, session_id: str, user_id: str, **values: Any) -> None:
    """An active user holding nothing, as if its list had been taken back."""
    with sv.db.transaction() as session:
        session.add(WorkloadUser(workload_id=session_id, user_id=user_id, state="active", **values))


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
    """Every user delivers its list, and the next ones it gets, until nothing is out."""
    for _ in range(100):
        out = sorted(assignments(sv, session_id).items())
        if not out:
            return
        for number, holder in out:
            events.record_rendered_frame(sv, rendered(session_id, str(holder), number, fake_peers))
    raise AssertionError("frames are still out after 100 rounds")


def demand(log: PeerLog) -> list[tuple[str, Any]]:
    """The User Manager messages that ask for users: registrations and demands."""
    return [
        (topic, data)
        for topic, data in log.user_manager()
        if topic in ("new-session", "update-user-count", "more-users")
    ]


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


def test_the_first_user_leaves_the_expected_users_their_share(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    """11 frames, 2 users expected: the first to arrive takes its half, not everything."""
    events.add_users(supervisor, new_users(session_id, "u1"))

    assert assignments(supervisor, session_id) == {n: "u1" for n in range(10, 16)}
    assert pending(supervisor, session_id) == [16, 17, 18, 19, 20]


def test_a_new_users_that_leaves_users_missing_asks_for_the_rest_at_once(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str
) -> None:
    with supervisor.db.transaction() as session:
        session.execute(update(Workload).values(target_user_count=4))
    peer_log.entries.clear()

    result = events.add_users(supervisor, new_users(session_id, "u1"))

    assert result["missing"] == 3
    assert demand(peer_log) == [("update-user-count", {"user_count": 3})], (
        "the whole missing count, at once (the User Manager forgot the rest)"
    )
    assert "more-users" not in peer_log.user_manager_topics()
    assert workload(supervisor, session_id).users_demanded == 3


def test_users_beyond_the_count_are_released_at_once(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
) -> None:
    result = events.add_users(supervisor, new_users(session_id, "u1", "u2", "u3", "u4"))

    assert (result["added"], result["refused"]) == (2, ["u3", "u4"])
    assert ("users-released", {"user_list": ["u3", "u4"]}) in peer_log.user_manager()
    assert sorted(m["user_id"] for m in lists_sent(fake_peers)) == ["u1", "u2"]
    assert set(assignments(supervisor, session_id).values()) == {"u1", "u2"}
    assert user_row(supervisor, session_id, "u3") is None
    assert user_row(supervisor, session_id, "u4") is None

    again = events.add_users(supervisor, new_users(session_id, "u5"))
    assert (again["added"], again["refused"]) == (0, ["u5"]), "the count is full"


@pytest.mark.parametrize("ending", ["completed", "failed", "stopped"])
def test_users_handed_to_an_ended_workload_are_returned(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers, ending: str
) -> None:
    if ending == "completed":
        events.add_users(supervisor, new_users(session_id, "u1", "u2"))
        render_all(supervisor, session_id, fake_peers)
    elif ending == "failed":
        fail_workload(supervisor, session_id, "broken")
    else:
        stop_and_delete(supervisor, "cust-1")
    drain_everything(supervisor)
    assert workload(supervisor, session_id).status == ending
    peer_log.entries.clear()
    sent_before = len(lists_sent(fake_peers))

    result = events.add_users(supervisor, new_users(session_id, "late1", "late2"))
    drain_everything(supervisor)

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
    assert len(lists_sent(fake_peers)) == sent_before, "no work for late users"
    assert user_row(supervisor, session_id, "late1") is None


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
    stored = frame(supervisor, session_id, 10)
    assert (stored.state, stored.final_key, stored.claim_key) == (
        FrameState.RENDERED,
        "cust-1/obj-1/010.png",
        None,
    )


@pytest.mark.parametrize(
    "sender", ["another active user", "a released user", "a disconnected user"]
)
def test_any_user_the_session_has_had_may_deliver_a_frame(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers, sender: str
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    if sender == "a released user":
        with supervisor.db.transaction() as session:
            session.execute(
                update(WorkloadUser)
                .where(WorkloadUser.user_id == "u2")
                .values(state=UserState.RELEASED)
            )
    elif sender == "a disconnected user":
        events.user_disconnected(supervisor, Event("user-disconnected", session_id, user_id="u2"))
    holder_before = assignments(supervisor, session_id).get(10)

    outcome = events.record_rendered_frame(supervisor, rendered(session_id, "u2", 10, fake_peers))

    assert outcome == "stored"
    assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u2"}
    assert holder_before == "u1"
    late = rendered(session_id, "u1", 10, fake_peers)
    assert events.record_rendered_frame(supervisor, late) == "duplicate"
    assert late.temp_key not in fake_peers.temp_blobs, "the second upload is deleted"
    assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u2"}, "written once"
    assert len(fake_peers.calls("/add-rendered-image")) == 1
    assert workload(supervisor, session_id).rendered_frames == 1


def test_a_disconnected_user_may_still_deliver_a_frame_moved_to_its_replacement(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    events.user_disconnected(supervisor, Event("user-disconnected", session_id, user_id="u1"))
    events.add_users(supervisor, new_users(session_id, "u3"))
    assert assignments(supervisor, session_id)[10] == "u3"

    assert events.record_rendered_frame(supervisor, rendered(session_id, "u1", 10, fake_peers)) == (
        "stored"
    )
    again = rendered(session_id, "u3", 10, fake_peers)
    assert events.record_rendered_frame(supervisor, again) == "duplicate"
    assert again.temp_key not in fake_peers.temp_blobs
    assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u1"}


@pytest.mark.parametrize("change", ["claim given up and retaken", "workload stopped"])
def test_an_upload_whose_claim_is_lost_during_its_copy_is_not_recorded_and_removed_from_temp(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers, change: str
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, fake_peers)
    copy = supervisor.peers.blob.transfer_temp_to_final

    def copy_while_state_changes(**kwargs: Any) -> int:
        size = copy(**kwargs)
        supervisor.peers.blob.transfer_temp_to_final = copy  # type: ignore[method-assign]
        if change == "workload stopped":
            stop_and_delete(supervisor, "cust-1")
        else:  # the claim timed out (beat gave it up), and another upload took it
            with supervisor.db.transaction() as session:
                session.execute(
                    update(Frame)
                    .where(Frame.workload_id == session_id, Frame.number == 10)
                    .values(state=FrameState.ASSIGNED, claim_key=None, claimed_by=None)
                )
            other = rendered(session_id, "u2", 10, fake_peers)
            assert events.record_rendered_frame(supervisor, other) == "stored"
        return size

    supervisor.peers.blob.transfer_temp_to_final = copy_while_state_changes  # type: ignore[method-assign]

    outcome = events.record_rendered_frame(supervisor, event)
    drain_everything(supervisor)

    assert outcome == "claim-lost"
    records = [r.json()["imageFilePath"] for r in fake_peers.calls("/add-rendered-image")]
    if change == "workload stopped":
        assert records == []
        assert workload(supervisor, session_id).rendered_frames == 0
    else:
        assert records == ["cust-1/obj-1/010.png"], "recorded once, by the winning upload"
        assert workload(supervisor, session_id).rendered_frames == 1
        assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u2"}
    assert "tmp/u1/10.png" not in fake_peers.temp_blobs, "the overtaken upload was left behind"


def test_an_upload_whose_workload_fails_during_its_copy_keeps_its_claim_and_is_stored(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    """The claim is still the upload's, so it is marked rendered (the image is in the final
    store); the failed workload is not revived by it."""
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, fake_peers)
    copy = supervisor.peers.blob.transfer_temp_to_final

    def copy_while_failing(**kwargs: Any) -> int:
        size = copy(**kwargs)
        with supervisor.db.transaction() as session:
            session.execute(
                update(Workload).where(Workload.id == session_id).values(status="failed")
            )
        return size

    supervisor.peers.blob.transfer_temp_to_final = copy_while_failing  # type: ignore[method-assign]

    assert events.record_rendered_frame(supervisor, event) == "stored"
    drain_everything(supervisor)

    assert "tmp/u1/10.png" not in fake_peers.temp_blobs
    assert len(fake_peers.calls("/add-rendered-image")) == 1
    assert (workload(supervisor, session_id).status, frame(supervisor, session_id, 10).state) == (
        "failed",
        FrameState.RENDERED,
    )


@pytest.mark.parametrize(
    ("user", "frame_number", "reason", "temp_removed"),
    [
        ("stranger", 10, "not-our-user", False),
        ("u1", 99, "frame-outside-workload", True),
    ],
)
def test_frames_that_do_not_fit_are_refused_without_effect(
    supervisor: Supervisor,
    session_id: str,
    fake_peers: FakePeers,
    user: str,
    frame_number: int,
    reason: str,
    temp_removed: bool,
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    before = assignments(supervisor, session_id)
    event = rendered(session_id, user, frame_number, fake_peers)

    with pytest.raises(events.EventRefused) as refused:
        events.record_rendered_frame(supervisor, event)

    assert refused.value.reason == reason
    assert fake_peers.stored == {}
    assert workload(supervisor, session_id).rendered_frames == 0
    assert assignments(supervisor, session_id) == before
    assert (event.temp_key not in fake_peers.temp_blobs) is temp_removed


@pytest.mark.parametrize("ending", ["failed", "completed"])
def test_an_upload_to_a_workload_that_is_not_running_is_refused_and_discarded(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers, ending: str
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    with supervisor.db.transaction() as session:
        session.execute(update(Workload).where(Workload.id == session_id).values(status=ending))
    event = rendered(session_id, "u1", 10, fake_peers)

    with pytest.raises(events.EventRefused) as refused:
        events.record_rendered_frame(supervisor, event)

    assert refused.value.reason == "workload-not-running"
    assert event.temp_key not in fake_peers.temp_blobs
    assert fake_peers.stored == {}
    assert fake_peers.calls("/add-rendered-image") == []
    assert frame(supervisor, session_id, 10).state == FrameState.ASSIGNED


def test_last_frame_completes_the_workload_once_the_catalog_has_every_record(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    peer_log.entries.clear()
    render_all(supervisor, session_id, fake_peers)
    drain_everything(supervisor)

    done = workload(supervisor, session_id)
    assert (done.status, done.rendered_frames, done.recorded_frames, done.total_frames) == (
        "completed",
        11,
        11,
        11,
    )
    assert sorted(fake_peers.stored) == [f"cust-1/obj-1/{n:03d}.png" for n in range(10, 21)]
    assert len(fake_peers.calls("/add-rendered-image")) == 11
    assert fake_peers.temp_blobs == {}
    stops = [m["user_id"] for m in lists_sent(fake_peers, "stop-work")]
    assert sorted(stops) == ["u1", "u2"], "one stop-work per user; users are independent"
    um = peer_log.user_manager()
    assert um[-3:] == [
        ("remove-users-demand-completely", {"session_supervisor_id": session_id}),
        ("users-released", {"user_list": ["u1", "u2"]}),
        ("cleanup-session", {}),
    ]
    sequence = peer_log.sequence()
    for stop in ("user:u1:stop-work", "user:u2:stop-work"):
        assert sequence.index("user-manager:remove-users-demand-completely") < sequence.index(stop)
        assert sequence.index(stop) < sequence.index("user-manager:users-released")
    [video_ready] = [r.json() for r in fake_peers.calls("/blender-objects/change-state")]
    assert video_ready == {
        "objectId": "obj-1",
        "customerId": "cust-1",
        "objectState": "video-ready",
    }


def test_a_completed_workload_queues_its_ending_in_order(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    from supervisor.workloads import complete_workloads

    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    with supervisor.db.transaction() as session:
        session.execute(
            update(Workload)
            .where(Workload.id == session_id)
            .values(recorded_frames=11, rendered_frames=11)
        )
    drain_everything(supervisor)
    supervisor.jobs.drain_outbox = lambda: None  # type: ignore[method-assign]

    assert complete_workloads(supervisor, [session_id]) == [session_id]
    assert complete_workloads(supervisor, [session_id]) == [], "completed once"

    queued = [(destination, topic) for destination, topic, _body in pending_outbox(supervisor)]
    assert queued == [
        ("user-manager", "remove-users-demand-completely"),
        ("user-service", "stop-work"),
        ("user-service", "stop-work"),
        ("user-manager", "users-released"),
        ("catalog", "change-state"),
        ("user-manager", "cleanup-session"),
    ]


def test_the_workload_runs_until_the_catalog_confirms_every_record(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    fake_peers.fail_next("/add-rendered-image", status=503, times=1000)

    render_all(supervisor, session_id, fake_peers)

    status = workload_status(supervisor, "cust-1")
    assert (status["workload_status"], status["stored_frames"], status["recorded_frames"]) == (
        "running",
        11,
        0,
    )
    assert status["completed_frames"] == 11
    assert fake_peers.calls("/blender-objects/change-state") == []
    assert lists_sent(fake_peers, "stop-work") == []

    fake_peers.failures.clear()
    for _ in range(20):  # the drain backs off; make every waiting record due now
        with supervisor.db.transaction() as session:
            session.execute(text("UPDATE outbox SET available_at = now()"))
        drain_everything(supervisor)
        if workload(supervisor, session_id).status == "completed":
            break

    status = workload_status(supervisor, "cust-1")
    assert (status["workload_status"], status["recorded_frames"]) == ("completed", 11)
    assert len(fake_peers.calls("/blender-objects/change-state")) == 1


def test_transient_transfer_failure_keeps_the_claim_for_the_retry(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, fake_peers)
    fake_peers.fail_next("/retrieve-temp", status=503, times=10)

    with pytest.raises(PeerError) as failure:
        events.record_rendered_frame(supervisor, event)

    assert failure.value.transient
    claimed = frame(supervisor, session_id, 10)
    assert (claimed.state, claimed.claim_key, claimed.claimed_by) == (
        FrameState.STORING,
        event.temp_key,
        "u1",
    )
    assert event.temp_key in fake_peers.temp_blobs
    fake_peers.failures.clear()
    other = rendered(session_id, "u2", 10, fake_peers)
    assert events.record_rendered_frame(supervisor, other) == "duplicate", "the claim holds"
    assert other.temp_key not in fake_peers.temp_blobs
    assert events.record_rendered_frame(supervisor, event) == "stored", "the retry re-enters it"
    assert fake_peers.stored == {"cust-1/obj-1/010.png": b"image 10 by u1"}


def test_missing_temp_image_sends_the_frame_back_to_render(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_frames_per_assignment = 2
    events.add_users(supervisor, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 10, fake_peers)
    del fake_peers.temp_blobs[event.temp_key]

    assert events.record_rendered_frame(supervisor, event) == "requeued"

    lost = frame(supervisor, session_id, 10)
    assert (lost.state, lost.user_id, lost.claim_key, lost.attempts) == (
        FrameState.PENDING,
        None,
        None,
        1,
    )
    assert "retrieve-temp" in lost.last_error
    assert user_row(supervisor, session_id, "u1").failed_frames == 1
    assert lists_sent(fake_peers)[-1]["data"]["frame_list"] == [10, 11], "u1 is not topped up"

    events.record_rendered_frame(supervisor, rendered(session_id, "u1", 11, fake_peers))

    assert lists_sent(fake_peers)[-1]["data"]["frame_list"] == [10, 12], "rendered again"
    assert frame(supervisor, session_id, 10).attempts == 2


def test_a_user_whose_list_is_all_in_gets_its_next_list_at_once(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_frames_per_assignment = 2
    events.add_users(supervisor, new_users(session_id, "u1"))

    events.record_rendered_frame(supervisor, rendered(session_id, "u1", 10, fake_peers))
    assert [m["data"]["frame_list"] for m in lists_sent(fake_peers)] == [[10, 11]]

    events.record_rendered_frame(supervisor, rendered(session_id, "u1", 11, fake_peers))

    assert [m["data"]["frame_list"] for m in lists_sent(fake_peers)] == [[10, 11], [12, 13]]
    assert assignments(supervisor, session_id) == {12: "u1", 13: "u1"}


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


def test_completed_user_holding_nothing_gets_more_work(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    add_idle_user(supervisor, session_id, "idle")

    result = events.user_finished_list(
        supervisor, Event("user-rendering-completed", session_id, user_id="idle")
    )

    assert result == {"owed": [], "assigned": {"idle": 3}}
    assert lists_sent(fake_peers)[-1] == {
        "user_id": "idle",
        "topic": "start-rendering",
        "data": {"blend_file_hash": "hash-obj-1", "frame_list": [16, 17, 18]},
    }


# --- user-disconnected -----------------------------------------------------------------


def test_disconnected_user_frames_go_back_and_a_replacement_is_asked_for(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    peer_log.entries.clear()
    event = Event("user-disconnected", session_id, user_id="u1")

    first = events.user_disconnected(supervisor, event)
    second = events.user_disconnected(supervisor, event)

    assert (first["freed"], first["demanded"]) == (6, 1)
    assert second == {"ignored": True}
    assert assignments(supervisor, session_id) == {n: "u2" for n in range(16, 21)}
    assert pending(supervisor, session_id) == list(range(10, 16))
    assert len(lists_sent(fake_peers)) == 2, "u2 holds frames: it is not topped up"
    assert demand(peer_log) == [("update-user-count", {"user_count": 1})], (
        "the User Manager knows us (it just sent an event): no new registration"
    )
    assert user_row(supervisor, session_id, "u1").state == UserState.DISCONNECTED

    events.add_users(supervisor, new_users(session_id, "u3"))

    assert lists_sent(fake_peers)[-1]["user_id"] == "u3"
    assert lists_sent(fake_peers)[-1]["data"]["frame_list"] == [10, 11, 12]


def test_last_user_leaving_demands_users(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    events.user_disconnected(supervisor, Event("user-disconnected", session_id, user_id="u1"))
    peer_log.entries.clear()
    result = events.user_disconnected(
        supervisor, Event("user-disconnected", session_id, user_id="u2")
    )

    assert result["demanded"] == 2
    assert demand(peer_log) == [("update-user-count", {"user_count": 2})]
    assert supervisor.publisher.bodies[-1] == {
        "topic": "update-user-count",
        "supervisor-id": session_id,
        "data": {"user_count": 2},
    }
    assert assignments(supervisor, session_id) == {}
    assert pending(supervisor, session_id) == list(range(10, 21))


# --- user-error-sending-frame ----------------------------------------------------------


def error_event(session_id: str, user: str, frame: int) -> Event:
    return Event(
        "user-error-sending-frame",
        session_id,
        user_id=user,
        frame_number=frame,
        blend_file_hash="hash-obj-1",
    )


def test_error_sending_frame_asks_the_user_with_acknowledgement(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))

    assert events.user_could_not_send(supervisor, error_event(session_id, "u1", 10)) == "retrying"

    [ask] = [r.json() for r in fake_peers.calls("/send-msg-to-user-with-acknowledgement")]
    assert ask == {
        "user_id": "u1",
        "topic": "retrieve-frame",
        "data": {"frame-number": 10, "blend-file-hash": "hash-obj-1"},
    }
    assert fake_peers.calls("/send-msg-to-user-with-acknowledgment") == []
    assert assignments(supervisor, session_id)[10] == "u1"


def test_error_sending_frame_tries_the_other_spelling_once_on_404(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    fake_peers.fail_next("/send-msg-to-user-with-acknowledgement", status=404, times=1)

    outcome = events.user_could_not_send(supervisor, error_event(session_id, "u1", 10))

    assert len(fake_peers.calls("/send-msg-to-user-with-acknowledgement")) == 1
    [other] = fake_peers.calls("/send-msg-to-user-with-acknowledgment")
    assert other.json()["topic"] == "retrieve-frame"
    assert outcome == "requeued", "the fake has no such route: not acknowledged"


def test_lost_frames_are_rendered_again_and_a_failing_user_is_banned(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
) -> None:
    supervisor.settings.max_user_failures = 2
    fake_peers.acknowledge = False
    events.add_users(supervisor, new_users(session_id, "bad", "good"))
    bad_frames = sorted(n for n, u in assignments(supervisor, session_id).items() if u == "bad")

    outcomes = [
        events.user_could_not_send(supervisor, error_event(session_id, "bad", frame))
        for frame in bad_frames[:3]
    ]

    drain_everything(supervisor)

    assert outcomes == ["requeued", "requeued", "requeued"]
    assert user_row(supervisor, session_id, "bad").state == UserState.BANNED
    assert assignments(supervisor, session_id) == {n: "good" for n in range(16, 21)}
    assert pending(supervisor, session_id) == bad_frames
    assert frame(supervisor, session_id, bad_frames[0]).last_error == "user no longer has the frame"
    assert "user:bad:stop-work" in peer_log.sequence()
    assert ("users-released", {"user_list": ["bad"]}) in peer_log.user_manager()
    peer_log.entries.clear()

    again = events.add_users(supervisor, new_users(session_id, "bad"))
    assert again["added"] == 0
    assert again["refused"] == ["bad"]
    assert peer_log.user_manager() == [
        ("users-released", {"user_list": ["bad"]}),
        ("update-user-count", {"user_count": 1}),
    ], "still banned: released at once, and a replacement is asked for"


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
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
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
    held: dict[str, list[int]] = {}
    for number, holder in sorted(final.items()):
        held.setdefault(str(holder), []).append(number)
    # Lists go to different users concurrently; what each user ends with must be its share.
    assert {u: frames for u, frames in last_list.items() if frames} == held
    sent = [n for frames in last_list.values() for n in frames]
    assert len(sent) == len(set(sent)), "two users were sent the same frame"
    with supervisor.db.session() as session:
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
    assert len(final) + len(pending(supervisor, session_id)) == 11


# --- beat --------------------------------------------------------------------------------


def test_demand_users_repeats_an_unanswered_demand(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str
) -> None:
    peer_log.entries.clear()
    maintenance.demand_users(supervisor)
    assert peer_log.entries == [], "the last ask is fresh: nothing is sent"
    later = datetime.now(UTC) + timedelta(seconds=supervisor.settings.redemand_seconds + 1)

    assert maintenance.demand_users(supervisor, now=later) == {session_id: 2}

    assert demand(peer_log) == [
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 2}),
    ]
    assert supervisor.publisher.bodies[-1] == {
        "topic": "update-user-count",
        "supervisor-id": session_id,
        "data": {"user_count": 2},
    }


def test_demand_users_reports_only_the_demands_it_sent(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str
) -> None:
    peer_log.entries.clear()

    fresh = maintenance.demand_users(supervisor)

    assert peer_log.entries == []
    assert fresh == {}, "demand_users reports (and logs) a demand it did not send"


def test_demand_users_registers_again_only_when_the_workload_stalls(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str
) -> None:
    """The real User Manager lists a session once per new-session, so registrations are
    only made when it may have forgotten us, and each one gets its cleanup-session."""
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    peer_log.entries.clear()
    assert maintenance.demand_users(supervisor) == {}
    assert peer_log.entries == []
    later = datetime.now(UTC) + timedelta(seconds=supervisor.settings.stall_seconds + 1)

    assert maintenance.demand_users(supervisor, now=later) == {}

    assert peer_log.user_manager() == [("new-session", {"user_count": 2})]
    assert maintenance.demand_users(supervisor, now=later) == {}
    assert len(peer_log.user_manager()) == 1, "registered once per stall"

    with supervisor.db.session() as session:
        registrations = session.get(Workload, session_id).registrations
    assert registrations == 2, "the start's and the stall's"
    with supervisor.db.transaction() as session:
        session.execute(
            update(Workload).values(
                rendered_frames=Workload.total_frames, recorded_frames=Workload.total_frames
            )
        )
    peer_log.entries.clear()
    workloads.complete_workloads(supervisor, [session_id])
    drain_everything(supervisor)
    cleanups = [entry for entry in peer_log.user_manager() if entry[0] == "cleanup-session"]
    assert len(cleanups) == 2, "one cleanup-session per registration"


def test_demand_users_asks_for_missing_users(supervisor: Supervisor, session_id: str) -> None:
    with supervisor.db.transaction() as session:
        session.execute(update(Workload).values(users_demanded=0, target_user_count=3))
    assert maintenance.demand_users(supervisor) == {session_id: 3}
    assert supervisor.publisher.bodies[-1]["data"] == {"user_count": 3}


def test_stale_frames_are_reclaimed_from_silent_users(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
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
    peer_log.entries.clear()
    reclaimed = maintenance.reclaim_stale_frames(supervisor, now=later)
    drain_everything(supervisor)

    assert reclaimed == {session_id: len(quiet_frames_before)}
    assert user_row(supervisor, session_id, "quiet").state == UserState.RELEASED
    assert "quiet" not in assignments(supervisor, session_id).values()
    assert set(quiet_frames_before) <= set(pending(supervisor, session_id))
    assert "user:quiet:stop-work" in peer_log.sequence()
    assert peer_log.user_manager() == [
        ("users-released", {"user_list": ["quiet"]}),
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 1}),
    ], "released first (the User Service still reaches it), then a replacement asked for"


def test_a_silent_user_the_user_service_cannot_reach_is_not_released(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str, fake_peers: FakePeers
) -> None:
    """A node gone, or back under a new id: releasing its old id would put a dead user in
    the User Manager's idle pool, to be handed to the next session."""
    events.add_users(supervisor, new_users(session_id, "gone"))
    gone_frames = sorted(assignments(supervisor, session_id))
    later = datetime.now(UTC) + timedelta(seconds=supervisor.settings.stale_frame_seconds + 1)
    fake_peers.fail_next("/send-msg-to-user-with-acknowledgement", status=500)
    peer_log.entries.clear()

    reclaimed = maintenance.reclaim_stale_frames(supervisor, now=later)
    drain_everything(supervisor)

    assert reclaimed == {session_id: len(gone_frames)}
    [probe] = fake_peers.calls("/send-msg-to-user-with-acknowledgement")
    assert json.loads(probe.body)["topic"] == "retrieve-frame"
    assert json.loads(probe.body)["data"]["frame-number"] == gone_frames[0]
    assert user_row(supervisor, session_id, "gone").state == UserState.DISCONNECTED
    assert set(gone_frames) <= set(pending(supervisor, session_id))
    assert "users-released" not in peer_log.user_manager_topics()
    assert "user:gone:stop-work" not in peer_log.sequence()
    assert peer_log.user_manager() == [
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 2}),
    ]


def test_a_filled_count_drops_the_demand_instead_of_asking_for_zero(
    supervisor: Supervisor, peer_log: PeerLog, session_id: str
) -> None:
    """update-user-count 0 queues an empty demand at the real User Manager, which then
    sends an empty new-users."""
    events.add_users(supervisor, new_users(session_id, "u1"))
    peer_log.entries.clear()

    events.add_users(supervisor, new_users(session_id, "u2"))
    drain_everything(supervisor)

    assert peer_log.user_manager() == [
        ("remove-users-demand-completely", {"session_supervisor_id": session_id})
    ]
    assert workload(supervisor, session_id).users_demanded == 0


def test_rebalance_gives_an_idle_user_its_share_of_the_unassigned_frames(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1"))
    add_idle_user(supervisor, session_id, "idle")

    moved = maintenance.rebalance(supervisor)

    assert moved == {session_id: {"idle": 3}}
    assert assignments(supervisor, session_id) == {
        **{n: "u1" for n in range(10, 16)},
        **{n: "idle" for n in range(16, 19)},
    }
    assert pending(supervisor, session_id) == [19, 20]
    assert lists_sent(fake_peers)[1:] == [
        {
            "user_id": "idle",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "hash-obj-1", "frame_list": [16, 17, 18]},
        }
    ], "u1 holds frames: it gets no new list"


def test_rebalance_moves_the_tail_of_the_longest_list_when_nothing_is_unassigned(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    add_idle_user(supervisor, session_id, "idle")

    moved = maintenance.rebalance(supervisor)

    assert moved == {session_id: {"idle": 3}}
    assert assignments(supervisor, session_id) == {
        **{n: "u1" for n in range(10, 13)},
        **{n: "idle" for n in range(13, 16)},
        **{n: "u2" for n in range(16, 21)},
    }
    assert lists_sent(fake_peers)[2:] == [
        {
            "user_id": "idle",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "hash-obj-1", "frame_list": [13, 14, 15]},
        }
    ], "the donor is not sent a new list"
    assert frame(supervisor, session_id, 13).attempts == 2

    # the donor may still be rendering the moved frames: its upload wins
    assert events.record_rendered_frame(supervisor, rendered(session_id, "u1", 13, fake_peers)) == (
        "stored"
    )
    late = rendered(session_id, "idle", 13, fake_peers)
    assert events.record_rendered_frame(supervisor, late) == "duplicate"
    assert fake_peers.stored == {"cust-1/obj-1/013.png": b"image 13 by u1"}


def test_a_steal_leaves_frames_whose_upload_waits_in_the_inbox(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    """u1 has uploaded 13-15 but the events wait behind a slow intake: moving them would
    render them twice, so the tail comes from u2 instead."""
    events.add_users(supervisor, new_users(session_id, "u1", "u2"))
    add_idle_user(supervisor, session_id, "idle")
    inbox.record_many(
        supervisor.db, [rendered(session_id, "u1", n, fake_peers) for n in (13, 14, 15)]
    )

    moved = maintenance.rebalance(supervisor)

    assert moved == {session_id: {"idle": 2}}
    assert assignments(supervisor, session_id) == {
        **{n: "u1" for n in range(10, 16)},
        **{n: "u2" for n in range(16, 19)},
        19: "idle",
        20: "idle",
    }


def test_list_sizes_follow_measured_rates_and_leave_room_for_expected_users(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    with supervisor.db.transaction() as session:
        session.execute(update(Workload).values(target_user_count=3))
    add_idle_user(supervisor, session_id, "fast", frames_done=4, busy_seconds=1.0)
    add_idle_user(supervisor, session_id, "slow", frames_done=1, busy_seconds=1.0)

    moved = maintenance.rebalance(supervisor)

    # 11 unassigned; rates 4 and 1, one user expected at the mean 2.5: 11*4/7.5, 11*1/7.5
    assert moved == {session_id: {"fast": 6, "slow": 2}}
    assert assignments(supervisor, session_id) == {
        **{n: "fast" for n in range(10, 16)},
        **{n: "slow" for n in (16, 17)},
    }
    assert pending(supervisor, session_id) == [18, 19, 20]


def test_a_user_without_a_rate_counts_at_the_mean(
    supervisor: Supervisor, session_id: str, fake_peers: FakePeers
) -> None:
    add_idle_user(supervisor, session_id, "known", frames_done=3, busy_seconds=1.0)
    add_idle_user(supervisor, session_id, "new")

    moved = maintenance.rebalance(supervisor)

    assert moved == {session_id: {"known": 6, "new": 5}}


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
    before = assignments(supervisor, session_id)
    with pytest.raises(events.EventRefused) as refused:
        events.user_disconnected(supervisor, Event("user-disconnected", session_id, user_id="x"))
    assert refused.value.reason == "not-our-user"
    assert assignments(supervisor, session_id) == before == {n: "u1" for n in range(10, 16)}


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

    assert outcomes[:5] == ["stored", "duplicate", "duplicate", "stored", "duplicate"]
    assert [o.reason for o in outcomes[5:]] == [  # type: ignore[union-attr]
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
    assert (uploads | {f"tmp/u2/{u2_frame}.png", "tmp/u1/99.png"}) & left == set()
    assert f"tmp/stranger/{u1_frame}.png" in left, "not ours: refused, not touched"
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
    kept = frame(supervisor, session_id, 11)
    assert (kept.state, kept.claim_key) == (FrameState.STORING, "tmp/u1/11.png")
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
