"""The dashboard's read side on the real Postgres and Redis, against the simulator's HTTP
peers: the frame grid, users, timeline, ETA keys, the shared one-second document and the
one-fetch-per-frame previews."""

from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select, update

from supervisor import dashboard, eta
from supervisor.dashboard import documents
from supervisor.errors import NoActiveWorkload, ThumbnailUnavailable
from supervisor.frames import grid
from supervisor.frames.pipeline import give_up_upload, record_rendered_frame, record_rendered_frames
from supervisor.models import Workload, WorkloadUser
from supervisor.services import Services
from supervisor.users import add_users
from supervisor.workloads import workload_progress
from tests import factories
from tests.integration.rendering import new_users, rendered
from tests.peers import Peers

pytestmark = pytest.mark.integration


def _document(sv: Services, customer_id: str = "cust-1") -> dict:
    return documents.workload_document(sv, customer_id)


def _render(sv: Services, session_id: str, peers: Peers, user: str, frame: int) -> None:
    event = rendered(session_id, user, frame, peers)
    assert record_rendered_frame(sv, event) == "stored"


def test_the_grid_users_and_timeline_follow_the_workload(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    _render(sv, session_id, peers, "u1", 10)
    _render(sv, session_id, peers, "u2", 16)

    document = _document(sv)

    cells = document["grid"]
    assert (cells["cells"], cells["bucket_frames"], cells["first_frame"]) == (11, 1, 10)
    assert cells["rendered"][0] == 1
    assert cells["rendered"][6] == 1
    assert sum(cells["rendered"]) == 2
    assert sum(cells["assigned"]) + sum(cells["rerendering"]) == 9
    assert document["workload"]["rendered_frames"] == 2
    assert [frame["frame"] for frame in document["last_frames"]] == [16, 10]
    assert document["last_frames"][0]["user_id"] == "u2"
    users = {user["user_id"]: user for user in document["users"]["items"]}
    assert users["u1"]["frames_done"] == 1
    assert users["u1"]["frames_held"] == 5
    assert not users["u1"]["banned"]
    kinds = [event["kind"] for event in document["timeline"]]
    assert kinds[-1] == "started"
    assert kinds.count("users-added") == 2


def test_a_refused_frame_shows_as_failed_then_re_rendering(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    event = rendered(session_id, "u1", 12, peers)
    assert give_up_upload(sv, event, "not an image") == "requeued"

    document = _document(sv)

    assert document["grid"]["failed"][2] == 1
    refused = [event for event in document["timeline"] if event["kind"] == "frame-refused"]
    assert refused
    assert refused[0]["user_id"] == "u1"
    assert "frame 12: not an image" in refused[0]["detail"]

    add_users(sv, new_users(session_id, "u2"))
    assert _document(sv)["grid"]["rerendering"][2] == 1


def test_the_grid_of_a_large_workload_is_bucketed_and_counts_every_frame(sv: Services) -> None:
    total = 100_000
    with sv.db.transaction() as session:
        row = factories.workload(
            session,
            customer_id="big",
            status="running",
            total_frames=total,
            frame_start=1,
            frame_end=total,
            frame_step=1,
        )
        factories.frames(session, row.id, 1, total)
        grid.count_rendered(session, [(row, n) for n in range(1, 5001)])
        grid.count_rendered(session, [(row, total)])

    cells = _document(sv, "big")["grid"]

    assert cells["cells"] <= grid.GRID_CELLS
    assert cells["bucket_frames"] == grid.bucket_frames(total) == 98
    assert sum(cells["rendered"]) == 5001
    assert cells["rendered"][0] == 98
    assert cells["rendered"][-1] == 1


def test_progress_carries_the_eta_keys(sv: Services, session_id: str, peers: Peers) -> None:
    add_users(sv, new_users(session_id, "u1"))
    body = workload_progress(sv, "cust-1")

    assert body["eta_basis"] in ("warming-up", "measured")
    assert {"eta_seconds", "eta_low_seconds", "eta_high_seconds"} <= body.keys()


def test_viewers_within_a_second_share_one_document(sv: Services, session_id: str) -> None:
    first = dashboard.workload_snapshot(sv, "cust-1")
    with sv.db.transaction() as session:
        session.get(Workload, session_id).target_user_count = 9  # type: ignore[union-attr]

    assert dashboard.workload_snapshot(sv, "cust-1") == first
    sv.redis.delete("supervisor:dashboard:workload:cust-1")
    assert dashboard.workload_snapshot(sv, "cust-1").etag != first.etag


def test_an_unknown_customer_has_no_document(sv: Services) -> None:
    with pytest.raises(NoActiveWorkload):
        dashboard.workload_snapshot(sv, "nobody")


@pytest.mark.commits
def test_a_preview_is_fetched_once_however_many_ask(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    _render(sv, session_id, peers, "u1", 10)
    answers: list[dashboard.Thumbnail] = []

    def ask() -> None:
        answers.append(dashboard.thumbnail(sv, session_id, 10))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answers.append(dashboard.thumbnail(sv, session_id, 10))

    assert len(peers.calls("/retrieve-image")) == 1
    assert len({answer.etag for answer in answers}) == 1
    with Image.open(io.BytesIO(answers[0].body)) as image:
        assert image.format == "PNG"
        assert image.width <= 240
        assert image.height <= 135


def test_a_preview_the_blob_service_cannot_give_now_is_asked_for_again_later(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    _render(sv, session_id, peers, "u1", 10)
    peers.fail_next("/retrieve-image", status=503, times=sv.settings.peer_retries + 1)
    with pytest.raises(ThumbnailUnavailable):
        dashboard.thumbnail(sv, session_id, 10)
    before = len(peers.calls("/retrieve-image"))

    answer = dashboard.thumbnail(sv, session_id, 10)

    assert len(peers.calls("/retrieve-image")) == before + 1
    with Image.open(io.BytesIO(answer.body)) as image:
        assert image.format == "PNG"


def test_a_frame_not_stored_has_no_preview(sv: Services, session_id: str) -> None:
    with pytest.raises(NoActiveWorkload):
        dashboard.thumbnail(sv, session_id, 10)
    with sv.db.session() as session:
        assert session.scalar(select(Workload.id).where(Workload.id == session_id))


def test_the_pace_kept_in_sql_is_eta_fold(sv: Services, session_id: str, peers: Peers) -> None:
    add_users(sv, new_users(session_id, "u1"))
    expected: tuple[float | None, float | None, int] = (None, None, 0)
    for frame, seconds in zip(range(10, 16), (30.0, 2.0, 2.2, 1.8, 9.0, 2.0), strict=True):
        with sv.db.transaction() as session:
            session.execute(
                update(WorkloadUser)
                .where(WorkloadUser.workload_id == session_id, WorkloadUser.user_id == "u1")
                .values(
                    clock_at=func.now() - timedelta(seconds=seconds),
                    # The first upload of the list holds its start-up: not folded in.
                    clock_from_list=frame == 10,
                )
            )
        _render(sv, session_id, peers, "u1", frame)
        if frame == 10:
            list_start = eta.fold_list_start(None, seconds)
        else:
            expected = eta.fold(*expected, seconds)
        with sv.db.session() as session:
            user = session.get(WorkloadUser, (session_id, "u1"))
            assert user is not None
            assert user.pace_samples == expected[2]
            assert user.pace_seconds == pytest.approx(expected[0], abs=0.05)
            assert user.pace_spread == pytest.approx(expected[1], abs=0.05)
            assert user.list_start_seconds == pytest.approx(list_start, abs=0.05)


def test_a_users_frames_in_one_batch_each_count(
    sv: Services, session_id: str, peers: Peers
) -> None:
    add_users(sv, new_users(session_id, "u1"))
    batch = [rendered(session_id, "u1", frame, peers) for frame in (10, 11, 12)]

    assert record_rendered_frames(sv, batch) == ["stored"] * 3

    [user] = _document(sv)["users"]["items"]
    assert user["frames_done"] == 3
