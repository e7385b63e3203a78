"""Ended workloads are kept for WORKLOAD_RETENTION_SECONDS, then removed by beat in bounded
batches with their frames and users; until then the status of the customer's last workload,
and of its last completed one, are served. A start refused by the catalog schedules nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from supervisor import maintenance, workloads
from supervisor.models import (
    Frame,
    InboxEvent,
    OutboxMessage,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.services import Services
from supervisor.users import add_users
from tests import factories
from tests.integration.helpers import PeerLog, drain_everything
from tests.integration.rendering import new_users, render_all
from tests.peers import Peers

PREFIX = "/api/session-supervisor-service"
DAY = timedelta(days=1)


@pytest.fixture
def now(sv: Services) -> datetime:
    """The time of the test, with the default retention whatever the environment says."""
    sv.settings.workload_retention_seconds = 7 * DAY.total_seconds()
    return datetime.now(UTC)


def ended(
    sv: Services,
    customer: str,
    status: WorkloadStatus,
    finished_at: datetime,
    *,
    frames: int = 0,
    users: tuple[str, ...] = (),
    unbound: bool = True,
) -> str:
    """An ended workload of `frames` frames, all rendered, held once by `users`; unbound
    once its grace period was over unless `unbound` is False."""
    with sv.db.transaction() as session:
        row = factories.workload(
            session,
            customer_id=customer,
            status=status,
            created_at=finished_at - timedelta(hours=1),
            finished_at=finished_at,
            unbound_at=finished_at + timedelta(minutes=2) if unbound else None,
            total_frames=frames,
            rendered_frames=frames,
            recorded_frames=frames,
        )
        if frames:
            factories.frames(session, row.id, 1, frames, state="rendered")
        if users:
            factories.users(session, row.id, *users, state=UserState.RELEASED)
        return row.id


def counts(sv: Services) -> tuple[int, int, int]:
    with sv.db.session() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(table))
            for table in (Workload, Frame, WorkloadUser)
        )


def remaining(sv: Services) -> set[str]:
    with sv.db.session() as session:
        return set(session.scalars(select(Workload.id)))


def batches(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {"workloads": r.workloads, "frames": r.frames}
        for r in caplog.records
        if r.getMessage() == "ended workloads removed"
    ]


def status(client: FlaskClient, customer: str, **query: str) -> Any:
    return client.get(
        f"{PREFIX}/get-workload-status", query_string={"customer_id": customer, **query}
    )


# --- the sweep -----------------------------------------------------------------------------


def test_old_ended_workloads_go_in_batches_with_their_frames_and_users(
    sv: Services, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    old = now - 8 * DAY
    statuses = [WorkloadStatus.COMPLETED, WorkloadStatus.FAILED, WorkloadStatus.STOPPED]
    for n in range(5):
        ended(
            sv,
            f"c{n}",
            statuses[n % 3],
            old + n * timedelta(minutes=1),
            frames=3,
            users=(f"u{n}",),
        )
    assert counts(sv) == (5, 15, 5)

    with caplog.at_level(logging.INFO, logger="supervisor.maintenance"):
        removed = maintenance.remove_old_workloads(sv, now=now, batch_size=2)

    assert removed == 5
    assert counts(sv) == (0, 0, 0), "frames and workload_users go with their workload"
    assert batches(caplog) == [
        {"workloads": 2, "frames": 6},
        {"workloads": 2, "frames": 6},
        {"workloads": 1, "frames": 3},
    ]
    assert maintenance.remove_old_workloads(sv, now=now) == 0


def test_a_batch_stops_at_the_workload_whose_frames_reach_the_budget(
    sv: Services, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    for n, frames in enumerate((4, 1, 1, 6)):
        ended(sv, f"c{n}", WorkloadStatus.COMPLETED, now - 20 * DAY + n * DAY, frames=frames)

    with caplog.at_level(logging.INFO, logger="supervisor.maintenance"):
        removed = maintenance.remove_old_workloads(sv, now=now, frame_budget=5)

    assert removed == 4
    assert batches(caplog) == [
        {"workloads": 2, "frames": 5},
        {"workloads": 2, "frames": 7},
    ], "a batch stops at the workload that reaches the budget"


def test_a_run_stops_after_its_time_budget_having_removed_one_batch(
    sv: Services, now: datetime
) -> None:
    for n in range(3):
        ended(sv, f"c{n}", WorkloadStatus.FAILED, now - 8 * DAY)

    for left in (2, 1):
        removed = maintenance.remove_old_workloads(
            sv, now=now, batch_size=1, time_budget_seconds=0.0
        )
        assert (removed, len(remaining(sv))) == (1, left)


def test_young_active_still_bound_and_busy_workloads_are_kept(sv: Services, now: datetime) -> None:
    old = now - 30 * DAY
    young = ended(sv, "young", WorkloadStatus.COMPLETED, now - 6 * DAY, frames=2)
    bound = ended(sv, "bound", WorkloadStatus.FAILED, old, unbound=False)
    sending = ended(sv, "sending", WorkloadStatus.COMPLETED, old)
    receiving = ended(sv, "receiving", WorkloadStatus.FAILED, old)
    gone = ended(sv, "gone", WorkloadStatus.COMPLETED, old, frames=2, users=("u1",))
    with sv.db.transaction() as session:
        active = [
            factories.workload(
                session,
                customer_id=f"active-{status}",
                status=status,
                created_at=old,
                started_at=old,
            ).id
            for status in (WorkloadStatus.INITIALIZED, WorkloadStatus.RUNNING)
        ]
        session.add(
            OutboxMessage(workload_id=sending, destination="user-manager", topic="t", body={})
        )
        session.add(InboxEvent(workload_id=receiving, topic="new-users", body={}))

    assert maintenance.remove_old_workloads(sv, now=now) == 1

    assert remaining(sv) == {young, bound, sending, receiving, *active}
    assert gone not in remaining(sv)
    assert counts(sv)[1] == 2, "the young workload keeps its frames"


def test_the_retention_is_the_setting(sv: Services, now: datetime) -> None:
    workload_id = ended(sv, "c", WorkloadStatus.COMPLETED, now - 2 * DAY)
    assert maintenance.remove_old_workloads(sv, now=now) == 0

    sv.settings.workload_retention_seconds = DAY.total_seconds()

    assert maintenance.remove_old_workloads(sv, now=now) == 1
    assert workload_id not in remaining(sv)


# --- status within the retention ------------------------------------------------------------


def test_the_last_workloads_status_is_served_within_the_retention(
    client: FlaskClient, sv: Services, now: datetime
) -> None:
    ended(sv, "cust-1", WorkloadStatus.COMPLETED, now - 10 * DAY, frames=5)
    ended(sv, "cust-1", WorkloadStatus.COMPLETED, now - 6 * DAY, frames=250)

    assert maintenance.remove_old_workloads(sv, now=now) == 1

    served = status(client, "cust-1")
    assert served.status_code == 200
    body = served.get_json()["status"]
    assert (body["workload_status"], body["completed_frames"], body["total_frames"]) == (
        "completed",
        250,
        250,
    )

    assert maintenance.remove_old_workloads(sv, now=now + 2 * DAY) == 1
    assert status(client, "cust-1").status_code == 404, "forgotten after the retention"


def test_a_failed_start_does_not_hide_the_last_completed_result(
    client: FlaskClient, sv: Services, peers: Peers, session_id: str
) -> None:
    add_users(sv, new_users(session_id, "u1", "u2"))
    render_all(sv, session_id, peers)
    drain_everything(sv)
    before = status(client, "cust-1").get_json()["status"]
    assert (before["workload_status"], before["completed_frames"]) == ("completed", 11)
    # now() is the test transaction's start: without this, both workloads would be as old.
    with sv.db.transaction() as session:
        session.execute(
            update(Workload)
            .where(Workload.id == session_id)
            .values(created_at=Workload.created_at - timedelta(hours=1))
        )

    typo = client.post(
        f"{PREFIX}/start-workload", data={"customer_id": "cust-1", "object_id": "obj-l"}
    )
    assert typo.status_code == 400

    latest = status(client, "cust-1").get_json()["status"]
    assert (latest["workload_status"], latest["total_frames"]) == ("failed", 0), (
        "without the parameter, status keeps its meaning: the latest workload"
    )
    last = status(client, "cust-1", last="completed")
    assert last.status_code == 200
    assert last.get_json() == {
        "message": "Workload status",
        "status": {
            "workload_status": "completed",
            "total_frames": 11,
            "completed_frames": 11,
            "completion_percentage": 100.0,
            "stored_frames": 11,
            "recorded_frames": 11,
        },
    }


def test_last_completed_is_a_404_without_one_and_other_values_are_refused(
    client: FlaskClient, sv: Services, now: datetime
) -> None:
    ended(sv, "cust-1", WorkloadStatus.FAILED, now)

    missing = status(client, "cust-1", last="completed")
    assert missing.status_code == 404
    assert missing.get_json()["message"] == "No completed workload for customer_id: cust-1"
    refused = status(client, "cust-1", last="failed")
    assert refused.status_code == 400
    assert refused.get_json()["message"] == "Invalid input"


# --- a start the catalog refuses ----------------------------------------------------------


def test_a_start_for_an_unknown_object_schedules_no_work(
    client: FlaskClient, sv: Services, peer_log: PeerLog, now: datetime
) -> None:
    scheduled: list[str] = []
    sv.jobs.unbind_later = lambda workload_id: scheduled.append(f"unbind {workload_id}")  # type: ignore[method-assign]
    sv.jobs.drain_outbox = lambda: scheduled.append("drain")  # type: ignore[method-assign]

    response = client.post(
        f"{PREFIX}/start-workload", data={"customer_id": "cust-1", "object_id": "missing"}
    )

    assert response.status_code == 400
    assert scheduled == [], "nothing was bound, registered or queued: nothing to undo"
    assert peer_log.entries == []
    with sv.db.session() as session:
        row = session.scalars(select(Workload)).one()
    assert (row.status, row.unbound_at is not None) == ("failed", True)
    assert workloads.overdue_unbindings(sv, now=now + DAY) == []
    assert maintenance.remove_old_workloads(sv, now=now + 8 * DAY) == 1
