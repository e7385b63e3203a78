"""supervisor.frames.pipeline on the real Postgres: each rendered frame stored and recorded
once, whoever delivers it and however often, alone or in a batch."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text, update

from supervisor.errors import PeerError
from supervisor.frames.pipeline import record_rendered_frame, record_rendered_frames
from supervisor.messages import UserDisconnected
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadUser
from supervisor.refusals import Refused
from supervisor.services import Services
from supervisor.users import add_users, user_disconnected
from supervisor.workloads import complete_workloads, stop_and_delete, workload_status
from tests.integration.helpers import PeerLog, drain_everything, pending_outbox
from tests.integration.rendering import (
    assignments,
    fail_copies_of_frame,
    frame,
    frame_image,
    lists_sent,
    new_users,
    render_all,
    rendered,
    run_together,
    user_row,
    workload,
)
from tests.peers import Peers

# --- claim and store ------------------------------------------------------------------


def test_rendered_frame_is_stored_recorded_and_cleaned_once(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, peers)

    assert record_rendered_frame(sv, event) == "stored"
    assert record_rendered_frame(sv, event) == "duplicate"

    assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u1")}
    records = [r.json() for r in peers.calls("/add-rendered-image")]
    assert records == [
        {
            "objectId": "obj-1",
            "customerId": "cust-1",
            "frameNumber": 10,
            "imageFilePath": "cust-1/obj-1/010.png",
        }
    ]
    assert "tmp/u1/10.png" not in peers.temp_blobs
    assert workload(sv, session_id).rendered_frames == 1
    stored = frame(sv, session_id, 10)
    assert (stored.state, stored.final_key, stored.claim_key) == (
        FrameState.RENDERED,
        "cust-1/obj-1/010.png",
        None,
    )


@pytest.mark.parametrize(
    "sender", ["another active user", "a released user", "a disconnected user"]
)
def test_any_user_the_session_has_had_may_deliver_a_frame(
    sv: Services, session_id: str, peers: Peers, sender: str
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    if sender == "a released user":
        with sv.db.transaction() as session:
            session.execute(
                update(WorkloadUser)
                .where(WorkloadUser.user_id == "u2")
                .values(state=UserState.RELEASED)
            )
    elif sender == "a disconnected user":
        user_disconnected(sv, UserDisconnected(session_id, user_id="u2"))
    holder_before = assignments(sv, session_id).get(10)

    outcome = record_rendered_frame(sv, rendered(session_id, "u2", 10, peers))

    assert outcome == "stored"
    assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u2")}
    assert holder_before == "u1"
    late = rendered(session_id, "u1", 10, peers)
    assert record_rendered_frame(sv, late) == "duplicate"
    assert late.temp_key not in peers.temp_blobs, "the second upload is deleted"
    assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u2")}, "written once"
    assert len(peers.calls("/add-rendered-image")) == 1
    assert workload(sv, session_id).rendered_frames == 1


def test_a_disconnected_user_may_still_deliver_a_frame_moved_to_its_replacement(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    user_disconnected(sv, UserDisconnected(session_id, user_id="u1"))
    add_users(sv, new_users(session_id, "u3"))
    assert assignments(sv, session_id)[10] == "u3"

    assert record_rendered_frame(sv, rendered(session_id, "u1", 10, peers)) == ("stored")
    again = rendered(session_id, "u3", 10, peers)
    assert record_rendered_frame(sv, again) == "duplicate"
    assert again.temp_key not in peers.temp_blobs
    assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u1")}


def test_a_re_upload_of_a_rendered_frame_is_removed_and_changes_nothing(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    record_rendered_frame(sv, rendered(session_id, "u1", 10, peers))
    again = rendered(session_id, "u1", 10, peers, key="tmp/u1/10-again.png")

    assert record_rendered_frame(sv, again) == "duplicate"

    assert "tmp/u1/10-again.png" not in peers.temp_blobs
    assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u1")}
    assert len(peers.calls("/add-rendered-image")) == 1
    assert workload(sv, session_id).rendered_frames == 1


@pytest.mark.commits  # racing threads
def test_the_same_frame_event_raced_in_two_workers_counts_once(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 10, peers)

    outcomes = run_together(*[lambda: record_rendered_frame(sv, event)] * 4)

    assert Counter(map(str, outcomes))["stored"] == 1
    assert workload(sv, session_id).rendered_frames == 1
    assert len(peers.calls("/add-rendered-image")) == 1


# --- refusals and lost claims ---------------------------------------------------------


@pytest.mark.commits  # the copy, which writes to the database here, runs in a pool thread
@pytest.mark.parametrize("change", ["claim given up and retaken", "workload stopped"])
def test_an_upload_whose_claim_is_lost_during_its_copy_is_not_recorded_and_removed_from_temp(
    sv: Services, session_id: str, peers: Peers, change: str
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, peers)
    copy = sv.peers.blob.transfer_temp_to_final

    def copy_while_state_changes(**kwargs: Any) -> int:
        size = copy(**kwargs)
        sv.peers.blob.transfer_temp_to_final = copy  # type: ignore[method-assign]
        if change == "workload stopped":
            stop_and_delete(sv, "cust-1")
        else:  # the claim timed out (beat gave it up), and another upload took it
            with sv.db.transaction() as session:
                session.execute(
                    update(Frame)
                    .where(Frame.workload_id == session_id, Frame.number == 10)
                    .values(state=FrameState.ASSIGNED, claim_key=None, claimed_by=None)
                )
            other = rendered(session_id, "u2", 10, peers)
            assert record_rendered_frame(sv, other) == "stored"
        return size

    sv.peers.blob.transfer_temp_to_final = copy_while_state_changes  # type: ignore[method-assign]

    outcome = record_rendered_frame(sv, event)
    drain_everything(sv)

    assert outcome == "claim-lost"
    records = [r.json()["imageFilePath"] for r in peers.calls("/add-rendered-image")]
    if change == "workload stopped":
        assert records == []
        assert workload(sv, session_id).rendered_frames == 0
    else:
        assert records == ["cust-1/obj-1/010.png"], "recorded once, by the winning upload"
        assert workload(sv, session_id).rendered_frames == 1
        assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u2")}
    assert "tmp/u1/10.png" not in peers.temp_blobs, "the overtaken upload was left behind"


@pytest.mark.commits  # the copy, which writes to the database here, runs in a pool thread
def test_an_upload_whose_workload_fails_during_its_copy_keeps_its_claim_and_is_stored(
    sv: Services, session_id: str, peers: Peers
) -> None:
    """The claim is still the upload's, so it is marked rendered (the image is in the final
    store); the failed workload is not revived by it."""
    add_users(sv, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, peers)
    copy = sv.peers.blob.transfer_temp_to_final

    def copy_while_failing(**kwargs: Any) -> int:
        size = copy(**kwargs)
        with sv.db.transaction() as session:
            session.execute(
                update(Workload).where(Workload.id == session_id).values(status="failed")
            )
        return size

    sv.peers.blob.transfer_temp_to_final = copy_while_failing  # type: ignore[method-assign]

    assert record_rendered_frame(sv, event) == "stored"
    drain_everything(sv)

    assert "tmp/u1/10.png" not in peers.temp_blobs
    assert len(peers.calls("/add-rendered-image")) == 1
    assert (workload(sv, session_id).status, frame(sv, session_id, 10).state) == (
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
    sv: Services,
    session_id: str,
    peers: Peers,
    user: str,
    frame_number: int,
    reason: str,
    temp_removed: bool,
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    before = assignments(sv, session_id)
    event = rendered(session_id, user, frame_number, peers)

    with pytest.raises(Refused) as refused:
        record_rendered_frame(sv, event)

    assert refused.value.reason == reason
    assert peers.stored == {}
    assert workload(sv, session_id).rendered_frames == 0
    assert assignments(sv, session_id) == before
    assert (event.temp_key not in peers.temp_blobs) is temp_removed


@pytest.mark.parametrize("ending", ["failed", "completed"])
def test_an_upload_to_a_workload_that_is_not_running_is_refused_and_discarded(
    sv: Services, session_id: str, peers: Peers, ending: str
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    with sv.db.transaction() as session:
        session.execute(update(Workload).where(Workload.id == session_id).values(status=ending))
    event = rendered(session_id, "u1", 10, peers)

    with pytest.raises(Refused) as refused:
        record_rendered_frame(sv, event)

    assert refused.value.reason == "workload-not-running"
    assert event.temp_key not in peers.temp_blobs
    assert peers.stored == {}
    assert peers.calls("/add-rendered-image") == []
    assert frame(sv, session_id, 10).state == FrameState.ASSIGNED


# --- copy failures and giving up ------------------------------------------------------


def test_transient_transfer_failure_keeps_the_claim_for_the_retry(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, peers)
    peers.fail_next("/retrieve-temp", status=503, times=10)

    with pytest.raises(PeerError) as failure:
        record_rendered_frame(sv, event)

    assert failure.value.transient
    claimed = frame(sv, session_id, 10)
    assert (claimed.state, claimed.claim_key, claimed.claimed_by) == (
        FrameState.STORING,
        event.temp_key,
        "u1",
    )
    assert event.temp_key in peers.temp_blobs
    peers.failures.clear()
    other = rendered(session_id, "u2", 10, peers)
    assert record_rendered_frame(sv, other) == "duplicate", "the claim holds"
    assert other.temp_key not in peers.temp_blobs
    assert record_rendered_frame(sv, event) == "stored", "the retry re-enters it"
    assert peers.stored == {"cust-1/obj-1/010.png": frame_image(10, "u1")}


def test_missing_temp_image_sends_the_frame_back_to_render(
    sv: Services, session_id: str, peers: Peers
) -> None:
    sv.settings.max_frames_per_assignment = 2
    add_users(sv, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 10, peers)
    del peers.temp_blobs[event.temp_key]

    assert record_rendered_frame(sv, event) == "requeued"

    lost = frame(sv, session_id, 10)
    assert (lost.state, lost.user_id, lost.claim_key, lost.attempts) == (
        FrameState.PENDING,
        None,
        None,
        1,
    )
    assert "retrieve-temp" in lost.last_error
    assert user_row(sv, session_id, "u1").failed_frames == 1
    assert lists_sent(peers)[-1]["data"]["frame_list"] == [10, 11], "u1 is not topped up"

    record_rendered_frame(sv, rendered(session_id, "u1", 11, peers))

    assert lists_sent(peers)[-1]["data"]["frame_list"] == [10, 12], "rendered again"
    assert frame(sv, session_id, 10).attempts == 2


def test_status_names_a_failing_peer_while_it_fails(
    sv: Services, session_id: str, peers: Peers
) -> None:
    assert "degraded_peers" not in workload_status(sv, "cust-1")
    add_users(sv, new_users(session_id, "u1"))
    peers.fail_next("/retrieve-temp", status=503, times=10)
    with pytest.raises(PeerError):
        record_rendered_frame(sv, rendered(session_id, "u1", 10, peers))

    degraded = workload_status(sv, "cust-1")["degraded_peers"]

    assert degraded["blob-service"]["operation"] == "retrieve-temp"
    assert degraded["blob-service"]["status"] == 503


# --- completion -----------------------------------------------------------------------


def test_last_frame_completes_the_workload_once_the_catalog_has_every_record(
    sv: Services, peer_log: PeerLog, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    peer_log.entries.clear()
    render_all(sv, session_id, peers)
    drain_everything(sv)

    done = workload(sv, session_id)
    assert (done.status, done.rendered_frames, done.recorded_frames, done.total_frames) == (
        "completed",
        11,
        11,
        11,
    )
    assert sorted(peers.stored) == [f"cust-1/obj-1/{n:03d}.png" for n in range(10, 21)]
    assert len(peers.calls("/add-rendered-image")) == 11
    assert peers.temp_blobs == {}
    stops = [m["user_id"] for m in lists_sent(peers, "stop-work")]
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
    [video_ready] = [r.json() for r in peers.calls("/blender-objects/change-state")]
    assert video_ready == {
        "objectId": "obj-1",
        "customerId": "cust-1",
        "objectState": "video-ready",
    }


def test_a_completed_workload_queues_its_ending_in_order(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    with sv.db.transaction() as session:
        session.execute(
            update(Workload)
            .where(Workload.id == session_id)
            .values(recorded_frames=11, rendered_frames=11)
        )
    drain_everything(sv)
    sv.jobs.drain_outbox = lambda: None  # type: ignore[method-assign]

    assert complete_workloads(sv, [session_id]) == [session_id]
    assert complete_workloads(sv, [session_id]) == [], "completed once"

    queued = [(destination, topic) for destination, topic, _body in pending_outbox(sv)]
    assert queued == [
        ("user-manager", "remove-users-demand-completely"),
        ("user-service", "stop-work"),
        ("user-service", "stop-work"),
        ("user-manager", "users-released"),
        ("catalog", "change-state"),
        ("user-manager", "cleanup-session"),
    ]


def test_the_workload_runs_until_the_catalog_confirms_every_record(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    peers.fail_next("/add-rendered-image", status=503, times=1000)

    render_all(sv, session_id, peers)

    status = workload_status(sv, "cust-1")
    assert (status["workload_status"], status["stored_frames"], status["recorded_frames"]) == (
        "running",
        11,
        0,
    )
    assert status["completed_frames"] == 11
    assert peers.calls("/blender-objects/change-state") == []
    assert lists_sent(peers, "stop-work") == []

    peers.failures.clear()
    for _ in range(20):  # the drain backs off; make every waiting record due now
        with sv.db.transaction() as session:
            session.execute(text("UPDATE outbox SET available_at = now()"))
        drain_everything(sv)
        if workload(sv, session_id).status == "completed":
            break

    status = workload_status(sv, "cust-1")
    assert (status["workload_status"], status["recorded_frames"]) == ("completed", 11)
    assert len(peers.calls("/blender-objects/change-state")) == 1


# --- batches --------------------------------------------------------------------------


def test_a_batch_of_rendered_frames_has_the_single_path_outcomes(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    owner = assignments(sv, session_id)
    u1_frame = min(n for n, u in owner.items() if u == "u1")
    u2_frame = min(n for n, u in owner.items() if u == "u2")
    first = rendered(session_id, "u1", u1_frame, peers)
    batch = [
        first,
        first,  # the same event twice in one batch
        rendered(session_id, "u1", u1_frame, peers, key="tmp/u1/second-upload.png"),
        rendered(session_id, "u2", u2_frame, peers),
        rendered(session_id, "u2", u1_frame, peers, key="tmp/u2/not-mine.png"),
        rendered(session_id, "stranger", u1_frame, peers),
        rendered(session_id, "u1", 99, peers),
    ]

    outcomes = record_rendered_frames(sv, batch)

    assert outcomes[:5] == ["stored", "duplicate", "duplicate", "stored", "duplicate"]
    assert [o.reason for o in outcomes[5:]] == [  # type: ignore[union-attr]
        "not-our-user",
        "frame-outside-workload",
    ]
    assert sorted(peers.stored) == sorted(f"cust-1/obj-1/{n:03d}.png" for n in (u1_frame, u2_frame))
    records = sorted(r.json()["frameNumber"] for r in peers.calls("/add-rendered-image"))
    assert records == sorted([u1_frame, u2_frame])
    assert workload(sv, session_id).rendered_frames == 2
    left = set(peers.temp_blobs)
    uploads = {first.temp_key, "tmp/u1/second-upload.png", "tmp/u2/not-mine.png"}
    assert (uploads | {f"tmp/u2/{u2_frame}.png", "tmp/u1/99.png"}) & left == set()
    assert f"tmp/stranger/{u1_frame}.png" in left, "not ours: refused, not touched"
    assert record_rendered_frames(sv, [first]) == ["duplicate"]


def test_a_batch_retries_only_the_upload_whose_copy_failed(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    batch = [rendered(session_id, "u1", n, peers) for n in (10, 11, 12)]
    copy = fail_copies_of_frame(sv, 11)

    outcomes = record_rendered_frames(sv, batch)

    assert outcomes[0] == "stored"
    assert outcomes[2] == "stored"
    assert isinstance(outcomes[1], PeerError)
    assert outcomes[1].transient
    kept = frame(sv, session_id, 11)
    assert (kept.state, kept.claim_key) == (FrameState.STORING, "tmp/u1/11.png")
    assert "tmp/u1/11.png" in peers.temp_blobs
    sv.peers.blob.transfer_temp_to_final = copy
    assert record_rendered_frame(sv, batch[1]) == "stored"


# --- checks --------------------------------------------------------------------------------


def test_an_invalid_upload_is_refused_once_however_often_it_is_delivered(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    event = rendered(session_id, "u1", 10, peers)
    peers.temp_blobs[event.temp_key] = b"render failed: out of memory\n"

    assert record_rendered_frame(sv, event) == "refused-invalid"
    assert record_rendered_frame(sv, event) == "duplicate", "a redelivery changes nothing"

    row = frame(sv, session_id, 10)
    assert row.state != "rendered"
    assert row.refused_by == ["u1"]
    assert row.last_error.startswith("not-an-image")
    assert user_row(sv, session_id, "u1").failed_frames == 1
    assert peers.stored == {}
    assert assignments(sv, session_id).get(10) != "u1", "not straight back to its sender"
