"""No binding outlives its workload, and none goes before the User Manager is done with it.

A preparation binds the session before it takes the workload's row; a stop and the end of
the grace period can come in between (seen under CI load: a prepare's bind landed after the
unbinding of the stopped workload). And the grace period runs from the later of the ending
and the last `cleanup-session` sent, never while the workload's User Manager messages are
still queued (seen under CI load: the outbox sent a stopped workload's demand after its
grace period, the User Manager answered with users, and their `new-users` was refused)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update

from supervisor import workloads
from supervisor.models import OutboxMessage, Workload
from supervisor.services import Services
from tests.helpers import FIXTURES
from tests.integration.helpers import drain_everything
from tests.peers import Peers

PREFIX = "/api/session-supervisor-service"
CUSTOMER = "cust-1"
WAIT_SECONDS = 10


class RecordedBindings:
    """The session keys bound on the intake queue; `on_bind` runs before a bind lands, as a
    stop and its unbinding may while the broker call is on its way."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.on_bind: Callable[[str], None] | None = None
        self.on_unbind: Callable[[str], None] | None = None

    def bind(self, session_id: str) -> None:
        if self.on_bind is not None:
            self.on_bind(session_id)
        self.bound.add(session_id)

    def unbind(self, session_id: str) -> None:
        self.bound.discard(session_id)
        if self.on_unbind is not None:
            self.on_unbind(session_id)


@pytest.fixture
def bindings(sv: Services, peers: Peers) -> RecordedBindings:
    peers.add_object(
        CUSTOMER, "obj-1", (FIXTURES / "blend/blender-5.0/range_10_20.blend").read_bytes()
    )
    recorded = RecordedBindings()
    sv.bindings = recorded  # type: ignore[assignment]
    return recorded


def start(client: FlaskClient) -> None:
    answer = client.post(
        f"{PREFIX}/start-workload", data={"customer_id": CUSTOMER, "object_id": "obj-1"}
    )
    assert answer.status_code == 200, answer.text


def grace_over(sv: Services, workload_id: str) -> None:
    with sv.db.transaction() as session:
        session.execute(
            update(Workload)
            .where(Workload.id == workload_id)
            .values(
                finished_at=func.now() - text("interval '1 day'"),
                cleanup_sent_at=func.now() - text("interval '1 day'"),
            )
        )


def rows(sv: Services) -> int:
    with sv.db.session() as session:
        return session.scalar(select(func.count()).select_from(Workload)) or 0


@pytest.mark.commits
def test_a_bind_that_lands_after_the_stopped_workload_was_forgotten_is_undone(
    client: FlaskClient, sv: Services, bindings: RecordedBindings
) -> None:
    def stopped_and_forgotten_first(workload_id: str) -> None:
        bindings.on_bind = None
        workloads.stop_and_delete(sv, CUSTOMER)
        grace_over(sv, workload_id)
        assert workloads.end_grace(sv, workload_id) is True

    bindings.on_bind = stopped_and_forgotten_first
    start(client)

    assert bindings.bound == set()
    assert rows(sv) == 0


@pytest.mark.commits
def test_a_bind_of_a_workload_stopped_in_its_grace_period_is_left_to_its_unbinding(
    client: FlaskClient, sv: Services, bindings: RecordedBindings
) -> None:
    stopped: list[str] = []

    def stopped_first(workload_id: str) -> None:
        bindings.on_bind = None
        workloads.stop_and_delete(sv, CUSTOMER)
        stopped.append(workload_id)

    bindings.on_bind = stopped_first
    start(client)
    [workload_id] = stopped
    assert bindings.bound == {workload_id}, "late users may still come in the grace period"

    grace_over(sv, workload_id)
    assert workloads.end_grace(sv, workload_id) is True
    assert bindings.bound == set()


@pytest.mark.commits
def test_a_bind_during_the_unbinding_waits_for_it_and_is_undone(
    client: FlaskClient, sv: Services, bindings: RecordedBindings
) -> None:
    """A second preparation of a workload that ran (a redelivered task) binds while the end
    of the grace period is unbinding it: it waits for the row and undoes its bind."""
    unbinding = threading.Event()
    release = threading.Event()
    ended: list[bool] = []
    threads: list[threading.Thread] = []

    def hold_the_row_after_unbinding(_session_id: str) -> None:
        bindings.on_unbind = None
        unbinding.set()
        assert release.wait(WAIT_SECONDS)

    def ran_stopped_and_unbinding_first(workload_id: str) -> None:
        bindings.on_bind = None
        with sv.db.transaction() as session:
            session.execute(
                update(Workload)
                .where(Workload.id == workload_id)
                .values(status="running", started_at=func.now())
            )
        workloads.stop_and_delete(sv, CUSTOMER)
        grace_over(sv, workload_id)
        bindings.on_unbind = hold_the_row_after_unbinding
        ending = threading.Thread(target=lambda: ended.append(workloads.end_grace(sv, workload_id)))
        threads.append(ending)
        ending.start()
        assert unbinding.wait(WAIT_SECONDS)
        threading.Timer(0.3, release.set).start()

    bindings.on_bind = ran_stopped_and_unbinding_first
    start(client)
    for thread in threads:
        thread.join(WAIT_SECONDS)

    assert ended == [True]
    assert bindings.bound == set()
    assert rows(sv) == 0


def test_the_grace_period_waits_for_the_user_manager_messages_and_runs_from_the_cleanup(
    client: FlaskClient, sv: Services, bindings: RecordedBindings, monkeypatch: pytest.MonkeyPatch
) -> None:
    start(client)
    with sv.db.session() as session:
        workload_id = session.scalars(select(Workload.id)).one()
    with monkeypatch.context() as outbox_stuck:
        outbox_stuck.setattr(sv.jobs, "drain_outbox", lambda: None)
        workloads.stop_and_delete(sv, CUSTOMER)
    a_day_ago = func.now() - text("interval '1 day'")
    with sv.db.transaction() as session:
        session.execute(update(Workload).values(finished_at=a_day_ago))

    assert workloads.overdue_unbindings(sv) == [], "its cleanup-session is still queued"
    assert workloads.end_grace(sv, workload_id) is False
    assert bindings.bound == {workload_id}

    drain_everything(sv)
    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0
        sent_at = session.scalar(select(Workload.cleanup_sent_at))
        now = session.scalar(select(func.now()))
    assert sent_at is not None
    assert now - sent_at < timedelta(minutes=1)
    assert workloads.overdue_unbindings(sv) == [], "the grace runs from the cleanup-session"
    assert workloads.end_grace(sv, workload_id) is False

    with sv.db.transaction() as session:
        session.execute(update(Workload).values(cleanup_sent_at=a_day_ago))
    assert workloads.overdue_unbindings(sv) == [workload_id]
    assert workloads.end_grace(sv, workload_id) is True
    assert bindings.bound == set()
    assert rows(sv) == 0
