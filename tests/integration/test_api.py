"""Every endpoint of CONTRACT.md §1: success and error bodies, on the real Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select, text, update

from app.errors import ALREADY_RUNNING
from supervisor import workloads
from supervisor.models import (
    Frame,
    FrameState,
    OutboxMessage,
    UserState,
    Workload,
    WorkloadUser,
)
from supervisor.outbox import drain, pending_count
from supervisor.services import Services
from tests.helpers import FIXTURES
from tests.integration.helpers import PeerLog, drain_everything
from tests.peers import Peers

PREFIX = "/api/session-supervisor-service"
BLEND = FIXTURES / "blend"


def blend(name: str) -> bytes:
    return (BLEND / name).read_bytes()


@pytest.fixture
def range_10_20(peers: Peers) -> str:
    peers.add_object("cust-1", "obj-1", blend("blender-5.0/range_10_20.blend"))
    return "obj-1"


def start(client, customer: str = "cust-1", obj: str = "obj-1"):  # type: ignore[no-untyped-def]
    return client.post(f"{PREFIX}/start-workload", data={"customer_id": customer, "object_id": obj})


def add_users(sv: Services, workload_id: str, *user_ids: str) -> None:
    with sv.db.transaction() as session:
        session.execute(
            insert(WorkloadUser),
            [{"workload_id": workload_id, "user_id": u, "state": "active"} for u in user_ids],
        )


def workload_of(sv: Services, customer: str = "cust-1") -> Workload:
    with sv.db.session() as session:
        return session.scalars(select(Workload).where(Workload.customer_id == customer)).one()


def test_service_is_active(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(f"{PREFIX}/")
    assert response.status_code == 200
    assert response.get_json() == {"message": "Session Supervisor Service is active"}


def test_start_workload_reads_the_blend_and_demands_users(
    client, sv: Services, peer_log: PeerLog, peers: Peers, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    response = start(client)

    assert response.status_code == 200
    assert response.get_json() == {"message": "Workload started"}
    workload = workload_of(sv)
    assert (workload.status, workload.total_frames, workload.scene_name) == ("running", 11, "Scene")
    with sv.db.session() as session:
        numbers = session.scalars(
            select(Frame.number).where(Frame.workload_id == workload.id).order_by(Frame.number)
        ).all()
    assert numbers == list(range(10, 21))
    [registration] = peers.calls("/api/user-manager/session-supervisor/new-session")
    assert registration.form() == {"user_count": "2", "session_supervisor_id": workload.id}
    assert sv.publisher.bodies == [
        {"topic": "update-user-count", "supervisor-id": workload.id, "data": {"user_count": 2}}
    ]
    assert peer_log.user_manager() == [
        ("new-session", {"user_count": 2}),
        ("update-user-count", {"user_count": 2}),
    ], "registered before the demand"
    assert (workload.users_demanded, workload.demanded_at is not None) == (2, True)
    assert workload.registered_at is not None


def test_start_workload_with_a_step_creates_exactly_the_rendered_frames(
    client, sv: Services, peers: Peers
) -> None:  # type: ignore[no-untyped-def]
    peers.add_object("cust-1", "obj-1", blend("blender-5.0/step_3_1_100.blend"))
    assert start(client).status_code == 200
    workload = workload_of(sv)
    with sv.db.session() as session:
        numbers = session.scalars(
            select(Frame.number).where(Frame.workload_id == workload.id).order_by(Frame.number)
        ).all()
    assert workload.total_frames == 34
    assert numbers == list(range(1, 101, 3))


def test_second_start_is_refused_with_the_contract_message(client, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    assert start(client).status_code == 200
    response = start(client)
    assert response.status_code == 400
    assert response.get_json() == {"message": ALREADY_RUNNING}


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"customer_id": "cust-1"},
        {"object_id": "obj-1"},
        {"customer_id": "", "object_id": "obj-1"},
        {"customer_id": "a/b", "object_id": "obj-1"},
        {"customer_id": "cust-1", "object_id": "../etc"},
        {"customer_id": "x" * 129, "object_id": "obj-1"},
        {"customer_id": "cust 1", "object_id": "obj-1"},
        {"customer_id": "cust-1", "object_id": ".."},
        {"customer_id": ".", "object_id": "obj-1"},
    ],
)
def test_start_workload_rejects_bad_fields(client, form: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    response = client.post(f"{PREFIX}/start-workload", data=form)
    assert response.status_code == 400
    body = response.get_json()
    assert body["message"] == "Invalid input"
    assert "_id" in body["details"]


def test_unknown_object_is_refused_and_does_not_block_the_customer(client, sv: Services) -> None:  # type: ignore[no-untyped-def]
    response = start(client, obj="missing")
    assert response.status_code == 400
    assert response.get_json()["message"] == "Object cannot be rendered"
    assert workload_of(sv).status == "failed"


def test_catalog_failure_is_a_500_that_names_the_peer(
    client, peers: Peers, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    peers.fail_next("/get-blend-file-name/obj-1", status=500, times=10)
    response = start(client)
    assert response.status_code == 500
    body = response.get_json()
    assert body["message"] == "Internal server error"
    assert "catalog" in body["details"]


@pytest.mark.parametrize(
    "name", ["bad/empty.blend", "bad/crafted_dna1_64GiB.blend", "bad/text.blend"]
)
def test_a_bad_blend_fails_the_workload_with_its_reason(client, peers: Peers, name: str) -> None:  # type: ignore[no-untyped-def]
    peers.add_object("cust-1", "obj-1", blend(name))
    assert start(client).status_code == 200
    status = client.get(f"{PREFIX}/get-workload-status?customer_id=cust-1").get_json()["status"]
    assert status["workload_status"] == "failed"
    assert status["failure_reason"]
    assert start(client).status_code == 200, "a failed workload must not block a new one"


def test_status_reports_counters(client, sv: Services, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    with sv.db.transaction() as session:
        session.execute(
            update(Frame)
            .where(Frame.workload_id == workload.id, Frame.number < 15)
            .values(state=FrameState.RENDERED)
        )
        session.execute(update(Workload).values(rendered_frames=5))

    response = client.get(f"{PREFIX}/get-workload-status", query_string={"customer_id": "cust-1"})

    assert response.status_code == 200
    assert response.get_json() == {
        "message": "Workload status",
        "status": {
            "workload_status": "running",
            "total_frames": 11,
            "completed_frames": 5,
            "completion_percentage": 45.45,
            "stored_frames": 5,
            "recorded_frames": 0,
        },
    }


@pytest.mark.parametrize("route", ["get-workload-status", "get-workload-progress"])
def test_status_and_progress_of_an_unknown_customer_are_404(client, route: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"{PREFIX}/{route}", query_string={"customer_id": "nobody"})
    assert response.status_code == 404
    assert response.get_json() == {"message": "No workload for customer_id: nobody"}


@pytest.mark.parametrize("route", ["get-workload-status", "get-workload-progress"])
def test_status_and_progress_without_customer_are_400(client, route: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"{PREFIX}/{route}")
    assert response.status_code == 400
    assert set(response.get_json()) == {"message", "details"}


def test_progress_maps_assigned_frames_to_their_users(
    client, sv: Services, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    add_users(sv, workload.id, "user-a", "user-b")
    with sv.db.transaction() as session:
        for numbers, user in (((10, 11), "user-a"), ((12,), "user-b")):
            session.execute(
                update(Frame)
                .where(Frame.workload_id == workload.id, Frame.number.in_(numbers))
                .values(state=FrameState.ASSIGNED, user_id=user)
            )
        session.execute(
            update(Frame)
            .where(Frame.workload_id == workload.id, Frame.number == 20)
            .values(state=FrameState.RENDERED, user_id="user-b")
        )
        session.execute(update(Workload).values(rendered_frames=1))

    body = client.get(f"{PREFIX}/get-workload-progress?customer_id=cust-1").get_json()

    assert body == {
        "total_frames": 11,
        "completed_frames": 1,
        "remaining_frames": 10,
        "progress_percentage": 9.09,
        "workload_status": "running",
        "active_users": 2,
        "frame_mapping": {"10": "user-a", "11": "user-a", "12": "user-b"},
        "frame_mapping_truncated": False,
        "eta_seconds": None,
        "eta_low_seconds": None,
        "eta_high_seconds": None,
        "eta_basis": "warming-up",
    }


def test_progress_caps_the_frame_mapping(client, sv: Services, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    sv.settings.progress_mapping_limit = 3
    start(client)
    workload = workload_of(sv)
    with sv.db.transaction() as session:
        session.execute(
            update(Frame)
            .where(Frame.workload_id == workload.id)
            .values(state=FrameState.ASSIGNED, user_id="user-a")
        )
    body = client.get(f"{PREFIX}/get-workload-progress?customer_id=cust-1").get_json()
    assert body["frame_mapping"] == {"10": "user-a", "11": "user-a", "12": "user-a"}
    assert body["frame_mapping_truncated"] is True


def _big_workload(sv: Services, frames: int, rendered: int, assigned: int) -> str:
    """A running workload made set-based, as the status benchmark makes its 1M-frame one:
    frames 1..rendered rendered, the next `assigned` held round-robin by user-0..user-2, a
    released user-3 that holds nothing, the rest pending."""
    with sv.db.transaction() as session:
        workload = Workload(
            customer_id="big",
            object_id="obj",
            status="running",
            total_frames=frames,
            rendered_frames=rendered,
            target_user_count=3,
        )
        session.add(workload)
        session.flush()
        session.execute(
            text(
                "INSERT INTO frames (workload_id, number, state, user_id) "
                "SELECT :id, n, CASE WHEN n <= r THEN 'rendered' "
                "  WHEN n <= r + a THEN 'assigned' ELSE 'pending' END, "
                "  CASE WHEN n > r AND n <= r + a THEN 'user-' || (n % 3) END "
                "FROM CAST(:rendered AS integer) AS r, CAST(:assigned AS integer) AS a, "
                "  generate_series(1, CAST(:frames AS integer)) AS n"
            ),
            {"id": workload.id, "frames": frames, "rendered": rendered, "assigned": assigned},
        )
        session.execute(
            insert(WorkloadUser),
            [
                {"workload_id": workload.id, "user_id": f"user-{n}", "state": "active"}
                for n in (0, 1, 2)
            ]
            + [{"workload_id": workload.id, "user_id": "user-3", "state": "released"}],
        )
        session.execute(text("ANALYZE frames"))
        return workload.id


def test_progress_of_a_huge_workload_counts_everything_and_maps_the_lowest_frames(
    client, sv: Services
) -> None:  # type: ignore[no-untyped-def]
    limit = sv.settings.progress_mapping_limit
    _big_workload(sv, frames=50_000, rendered=30_000, assigned=limit * 3)

    response = client.get(f"{PREFIX}/get-workload-progress?customer_id=big")
    body = response.get_json()

    assert len(response.data) < 4096, "a poll of a huge workload stays as small as any other"
    first = range(30_001, 30_001 + limit)
    assert body == {
        "total_frames": 50_000,
        "completed_frames": 30_000,
        "remaining_frames": 20_000,
        "progress_percentage": 60.0,
        "workload_status": "running",
        "active_users": 3,
        "frame_mapping": {str(n): f"user-{n % 3}" for n in first},
        "frame_mapping_truncated": True,
        "eta_seconds": None,
        "eta_low_seconds": None,
        "eta_high_seconds": None,
        "eta_basis": "warming-up",
    }
    assert list(body["frame_mapping"]) == [str(n) for n in first], "lowest frames first"


def test_progress_is_not_truncated_when_exactly_the_limit_is_out(client, sv: Services) -> None:  # type: ignore[no-untyped-def]
    sv.settings.progress_mapping_limit = 5
    _big_workload(sv, frames=20, rendered=10, assigned=5)

    body = client.get(f"{PREFIX}/get-workload-progress?customer_id=big").get_json()

    assert body["frame_mapping"] == {str(n): f"user-{n % 3}" for n in range(11, 16)}
    assert body["frame_mapping_truncated"] is False


def test_the_frame_mapping_reads_the_assigned_frames_index(sv: Services) -> None:
    """The mapping must walk ix_frames_assigned_number: through the primary key it would
    step over every rendered frame below the first assigned one (100 ms at 1M frames)."""
    _big_workload(sv, frames=50_000, rendered=40_000, assigned=300)
    with sv.db.engine.connect() as connection:
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = connection.exec_driver_sql(
            "EXPLAIN " + workloads.views._PROGRESS,
            {"customer_id": "big", "fetch": 101},
        ).scalars()
        plan_text = "\n".join(plan)
    assert "ix_frames_assigned_number" in plan_text, plan_text


def test_stop_and_delete_tells_users_and_the_user_manager(
    client, sv: Services, peer_log: PeerLog, peers: Peers, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    add_users(sv, workload.id, "user-a", "user-b")
    peer_log.entries.clear()

    response = client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-1"})
    drain_everything(sv)

    assert response.status_code == 200
    assert response.get_json() == {"message": "Workload stopped and deleted"}
    sent = [r.json() for r in peers.calls("/api/user-service/user/send-msg-to-user")]
    assert sorted(sent, key=lambda m: m["user_id"]) == [
        {"user_id": "user-a", "topic": "stop-work", "data": {}},
        {"user_id": "user-b", "topic": "stop-work", "data": {}},
    ]
    assert sv.publisher.bodies[1:] == [
        {
            "topic": "remove-users-demand-completely",
            "supervisor-id": workload.id,
            "data": {"session_supervisor_id": workload.id},
        },
        {
            "topic": "users-released",
            "supervisor-id": workload.id,
            "data": {"user_list": ["user-a", "user-b"]},
        },
    ]
    assert peer_log.user_manager_topics() == [
        "remove-users-demand-completely",
        "users-released",
        "cleanup-session",
    ]
    sequence = peer_log.sequence()
    for stop in ("user:user-a:stop-work", "user:user-b:stop-work"):
        assert sequence.index(stop) < sequence.index("user-manager:users-released")
    [cleanup] = peers.calls("/api/user-manager/session-supervisor/cleanup-session")
    assert (cleanup.method, cleanup.form()) == ("DELETE", {"session_supervisor_id": workload.id})
    assert peers.calls("/blender-objects/change-state") == [], "not video-ready"
    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Frame)) == 0
        kept = session.scalars(select(Workload)).one()
    assert (kept.id, kept.status) == (workload.id, "stopped"), "kept for the grace period"
    assert client.get(f"{PREFIX}/get-workload-status?customer_id=cust-1").status_code == 404
    assert client.get(f"{PREFIX}/get-workload-progress?customer_id=cust-1").status_code == 404
    assert start(client).status_code == 200, "a stopped workload does not block a new one"


def test_status_after_a_stop_shows_the_previous_workload(
    client, sv: Services, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(status="completed", rendered_frames=11))
    start(client)
    client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-1"})

    status = client.get(f"{PREFIX}/get-workload-status?customer_id=cust-1").get_json()["status"]
    progress = client.get(f"{PREFIX}/get-workload-progress?customer_id=cust-1").get_json()

    assert (status["workload_status"], status["completed_frames"]) == ("completed", 11)
    assert (progress["workload_status"], progress["completed_frames"]) == ("completed", 11)


def test_a_stopped_workload_is_forgotten_once_its_grace_period_is_over(
    client, sv: Services, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload_id = workload_of(sv).id
    client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-1"})
    unbound: list[str] = []
    sv.bindings.unbind = unbound.append  # type: ignore[method-assign]

    assert workloads.end_grace(sv, workload_id) is False, "the grace period runs"
    assert unbound == []
    assert workloads.overdue_unbindings(sv) == []
    a_day_ago = func.now() - text("interval '1 day'")
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(finished_at=a_day_ago, cleanup_sent_at=a_day_ago))
    assert workloads.overdue_unbindings(sv) == [workload_id]

    assert workloads.end_grace(sv, workload_id) is True
    assert workloads.end_grace(sv, workload_id) is False, "once"

    assert unbound == [workload_id]
    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Workload)) == 0
    body = client.get(f"{PREFIX}/get-session-supervisor-overview/cust-1").get_json()
    assert body == {"error": "No active session for customer_id: cust-1"}


@pytest.mark.parametrize("ending", ["completed", "failed"])
def test_an_ended_workload_is_only_unbound_after_its_grace_period(
    client, sv: Services, range_10_20: str, ending: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload_id = workload_of(sv).id
    with sv.db.transaction() as session:
        session.execute(
            update(Workload).values(
                status=ending, finished_at=func.now() - text("interval '1 day'")
            )
        )
    unbound: list[str] = []
    sv.bindings.unbind = unbound.append  # type: ignore[method-assign]

    assert workloads.end_grace(sv, workload_id) is True
    assert workloads.end_grace(sv, workload_id) is False

    assert unbound == [workload_id]
    kept = workload_of(sv)
    assert (kept.status, kept.unbound_at is not None) == (ending, True)
    assert workloads.overdue_unbindings(sv) == []


def test_stop_without_active_workload_is_404(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-1"})
    assert response.status_code == 404
    assert response.get_json() == {"message": "No active workload for customer_id: cust-1"}


def test_stop_keeps_messages_when_the_broker_is_down_and_sends_them_later(
    client, sv: Services, peers: Peers, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    sv.publisher.fail = True
    response = client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-1"})
    assert response.status_code == 200
    with sv.db.session() as session:
        waiting = session.scalars(select(OutboxMessage.topic).order_by(OutboxMessage.id)).all()
    assert waiting == ["remove-users-demand-completely", "cleanup-session"]
    assert peers.calls("/cleanup-session") == [], "the clean-up waits for the demand's drop"
    sv.publisher.fail = False
    with sv.db.transaction() as session:
        session.execute(update(OutboxMessage).values(available_at=func.now()))
    drain(sv.db, sv.publisher, sv.peers)
    assert sv.publisher.topics() == ["update-user-count", "remove-users-demand-completely"]
    assert len(peers.calls("/cleanup-session")) == 1
    with sv.db.session() as session:
        assert pending_count(session) == 0


# --- admin ---------------------------------------------------------------------------


def test_get_user_count(client, sv: Services, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    body = client.get(f"{PREFIX}/get-user-count/cust-1").get_json()
    assert body == {"user_count": 2, "session_id": workload.id, "active_users": 0}


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "get-user-count/nobody"), ("post", "set-user-count/nobody/3")],
)
def test_admin_routes_without_session_are_404(client, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    response = getattr(client, method)(f"{PREFIX}/{path}")
    assert response.status_code == 404
    assert response.get_json() == {"message": "No active session for customer_id: nobody"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "get-user-count/cust-1"), ("post", "set-user-count/cust-1/3")],
)
def test_admin_routes_refuse_strangers(client, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    response = getattr(client, method)(
        f"{PREFIX}/{path}",
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
        headers={"X-Forwarded-For": "127.0.0.1"},
    )
    assert response.status_code == 403
    assert response.get_json()["message"] == "Forbidden"


def test_admin_token_opens_admin_routes(client, sv: Services, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    sv.settings.admin_token = "s3cret-token"
    start(client)
    stranger = {"REMOTE_ADDR": "203.0.113.9"}
    wrong = client.get(
        f"{PREFIX}/get-user-count/cust-1",
        environ_base=stranger,
        headers={"Authorization": "Bearer nope"},
    )
    right = client.get(
        f"{PREFIX}/get-user-count/cust-1",
        environ_base=stranger,
        headers={"Authorization": "Bearer s3cret-token"},
    )
    assert (wrong.status_code, right.status_code) == (403, 200)


@pytest.mark.parametrize("count", ["0", "-1", "10001", "abc", "2.5", "5_0", "+5", "\uff15"])
def test_set_user_count_rejects_absurd_counts(client, range_10_20: str, count: str) -> None:  # type: ignore[no-untyped-def]
    start(client)
    response = client.post(f"{PREFIX}/set-user-count/cust-1/{count}")
    assert response.status_code == 400
    assert set(response.get_json()) == {"message", "details"}


def test_set_user_count_demands_the_missing_users(
    client, sv: Services, peer_log: PeerLog, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)

    response = client.post(f"{PREFIX}/set-user-count/cust-1/5")

    assert response.status_code == 200
    assert response.get_json() == {
        "message": "User count updated successfully",
        "new_user_count": 5,
    }
    assert sv.publisher.bodies[-1] == {
        "topic": "update-user-count",
        "supervisor-id": workload.id,
        "data": {"user_count": 5},
    }
    assert peer_log.user_manager()[-1] == ("update-user-count", {"user_count": 5}), (
        "the whole missing count"
    )
    assert "new-session" not in [topic for topic, _ in peer_log.user_manager()[1:]], (
        "registered once, at start"
    )


def test_set_user_count_asks_only_for_the_users_still_missing(
    client, sv: Services, peer_log: PeerLog, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    add_users(sv, workload_of(sv).id, "user-a", "user-b")

    assert client.post(f"{PREFIX}/set-user-count/cust-1/5").status_code == 200

    assert peer_log.user_manager()[-1] == ("update-user-count", {"user_count": 3})
    assert "more-users" not in sv.publisher.topics()
    assert workload_of(sv).users_demanded == 3


def test_set_user_count_releases_the_surplus(
    client, sv: Services, peers: Peers, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    add_users(sv, workload.id, "user-a", "user-b", "user-c")
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(users_demanded=0))
        session.execute(
            update(Frame)
            .where(Frame.workload_id == workload.id, Frame.number < 13)
            .values(state=FrameState.ASSIGNED, user_id="user-a")
        )
        session.execute(
            update(Frame)
            .where(Frame.workload_id == workload.id, Frame.number == 13)
            .values(state=FrameState.ASSIGNED, user_id="user-c")
        )

    response = client.post(f"{PREFIX}/set-user-count/cust-1/1")
    drain_everything(sv)

    assert response.status_code == 200
    assert sv.publisher.bodies[-1] == {
        "topic": "users-released",
        "supervisor-id": workload.id,
        "data": {"user_list": ["user-b", "user-c"]},
    }
    with sv.db.session() as session:
        states = dict(session.execute(select(WorkloadUser.user_id, WorkloadUser.state)).all())
        frame_13 = session.get(Frame, (workload.id, 13))
    assert states == {
        "user-a": UserState.ACTIVE,
        "user-b": UserState.RELEASED,
        "user-c": UserState.RELEASED,
    }
    assert (frame_13.state, frame_13.user_id) == (FrameState.PENDING, None)
    # messages to different users go out concurrently, in no set order
    stopped = sorted(r.json()["user_id"] for r in peers.calls("/send-msg-to-user"))
    assert stopped == ["user-b", "user-c"]


# --- overview (Customer Service, Admin Panel) ----------------------------------------


def overview_of(workload: Workload, status: str, users: int) -> dict[str, object]:
    return {
        "customer_id": workload.customer_id,
        "object_id": workload.object_id,
        "session_routing_key": f"SESSION_SUPERVISOR_{workload.id}",
        "session_id": workload.id,
        "number_of_users": users,
        "session_status": status,
    }


def test_session_overview_of_a_running_workload(client, sv: Services, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    add_users(sv, workload.id, "user-a", "user-b")
    with sv.db.transaction() as session:
        session.execute(
            insert(WorkloadUser),
            [{"workload_id": workload.id, "user_id": "gone", "state": "released"}],
        )

    response = client.get(f"{PREFIX}/get-session-supervisor-overview/cust-1")

    assert response.status_code == 200
    assert response.get_json() == overview_of(workload, "running", 2)
    assert list(response.get_json()) == list(overview_of(workload, "running", 2))


def test_session_overview_of_a_just_stopped_workload_still_answers(
    client, sv: Services, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    start(client)
    workload = workload_of(sv)
    add_users(sv, workload.id, "user-a")
    client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-1"})

    body = client.get(f"{PREFIX}/get-session-supervisor-overview/cust-1").get_json()

    assert body == overview_of(workload, "stopped", 0)
    assert client.get(f"{PREFIX}/get-all-supervisor-information").get_json() == []


def test_session_overview_shows_the_latest_workload(client, sv: Services, range_10_20: str) -> None:  # type: ignore[no-untyped-def]
    start(client)
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(status="failed"))
    start(client)
    with sv.db.session() as session:
        latest = session.scalars(select(Workload).where(Workload.status == "running")).one()

    body = client.get(f"{PREFIX}/get-session-supervisor-overview/cust-1").get_json()

    assert body == overview_of(latest, "running", 0)


def test_session_overview_of_an_unknown_customer_is_a_200_with_an_error(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"{PREFIX}/get-session-supervisor-overview/nobody")
    assert response.status_code == 200
    assert response.get_json() == {"error": "No active session for customer_id: nobody"}


def test_all_supervisor_information_lists_the_active_workloads(
    client, sv: Services, peers: Peers, range_10_20: str
) -> None:  # type: ignore[no-untyped-def]
    assert client.get(f"{PREFIX}/get-all-supervisor-information").get_json() == []
    peers.add_object("cust-2", "obj-2", blend("blender-5.0/range_10_20.blend"))
    peers.add_object("cust-3", "obj-3", blend("blender-5.0/range_10_20.blend"))
    start(client)
    start(client, "cust-2", "obj-2")
    start(client, "cust-3", "obj-3")
    first, second = workload_of(sv, "cust-1"), workload_of(sv, "cust-2")
    add_users(sv, second.id, "user-a")
    client.post(f"{PREFIX}/stop-and-delete-workload", data={"customer_id": "cust-3"})

    response = client.get(f"{PREFIX}/get-all-supervisor-information")

    assert response.status_code == 200
    assert response.get_json() == [
        overview_of(first, "running", 0),
        overview_of(second, "running", 1),
    ]


@pytest.mark.parametrize(
    "path", ["get-session-supervisor-overview/cust-1", "get-all-supervisor-information"]
)
def test_overview_routes_refuse_strangers(
    client, sv: Services, range_10_20: str, path: str
) -> None:  # type: ignore[no-untyped-def]
    sv.settings.admin_token = "s3cret-token"
    start(client)
    stranger = {"REMOTE_ADDR": "203.0.113.9"}

    forged = client.get(
        f"{PREFIX}/{path}", environ_base=stranger, headers={"X-Forwarded-For": "127.0.0.1"}
    )
    wrong = client.get(
        f"{PREFIX}/{path}", environ_base=stranger, headers={"Authorization": "Bearer nope"}
    )
    right = client.get(
        f"{PREFIX}/{path}",
        environ_base=stranger,
        headers={"Authorization": "Bearer s3cret-token"},
    )

    assert (forged.status_code, wrong.status_code, right.status_code) == (403, 403, 200)
    assert forged.get_json()["message"] == "Forbidden"
    assert workload_of(sv).id in right.get_data(as_text=True)


# --- HTTP hygiene -------------------------------------------------------------------


def test_oversized_body_is_413(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        f"{PREFIX}/start-workload",
        data={"customer_id": "c", "object_id": "o" * 200_000},
    )
    assert response.status_code == 413
    assert response.get_json()["message"] == "Request Entity Too Large"


def test_unknown_route_is_json_404(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"{PREFIX}/nope")
    assert response.status_code == 404
    assert set(response.get_json()) == {"message", "details"}


def test_wrong_method_is_json_405(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"{PREFIX}/start-workload")
    assert response.status_code == 405
    assert response.get_json()["message"] == "Method Not Allowed"


@pytest.mark.parametrize(
    ("query", "details"),
    [
        ({}, "customer_id is required"),
        ({"customer_id": "cust-1", "last": "soon"}, "last: Input should be 'completed'"),
    ],
)
def test_status_query_is_checked_against_its_model(client, query, details: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(f"{PREFIX}/get-workload-status", query_string=query)
    assert response.status_code == 400
    assert response.get_json() == {"message": "Invalid input", "details": details}


@pytest.mark.parametrize(
    ("route", "view"),
    [("get-workload-status", "workload_status"), ("get-workload-progress", "workload_progress")],
)
def test_an_answer_off_the_contract_is_a_500(  # type: ignore[no-untyped-def]
    client, monkeypatch: pytest.MonkeyPatch, route: str, view: str
) -> None:
    monkeypatch.setattr(workloads, view, lambda *_args, **_kwargs: {"surprise": 1})
    response = client.get(f"{PREFIX}/{route}", query_string={"customer_id": "cust-1"})
    assert response.status_code == 500
    assert response.get_json() == {
        "message": "Internal server error",
        "details": "ResponseOffContract",
    }


def test_status_and_progress_stay_in_the_openapi_document(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get(f"{PREFIX}/openapi.json").get_json()["paths"]
    for route, parameters in (
        ("get-workload-status", {"customer_id", "last"}),
        ("get-workload-progress", {"customer_id"}),
    ):
        operation = paths[f"{PREFIX}/{route}"]["get"]
        assert {p["name"] for p in operation["parameters"]} == parameters
        assert "200" in operation["responses"]
