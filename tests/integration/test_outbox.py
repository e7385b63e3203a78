"""The outbox drain on a real Postgres: lanes, leases, drainers side by side, lost connections."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from supervisor.errors import PeerError
from supervisor.models import OutboxMessage, Workload
from supervisor.outbox import (
    CATALOG,
    LANE_LOCK_CLASS,
    delete_temp_blob,
    drain,
    record_in_catalog,
    to_user_manager,
    to_users,
)
from supervisor.outbox.drainer import _forget_sent
from supervisor.services import Services


def peer_clients(**clients: Any) -> SimpleNamespace:
    """The slice of `Peers` the outbox uses, with these clients and no others."""
    return SimpleNamespace(
        **{"users": None, "catalog": None, "blob": None, "user_manager": None, **clients},
        longest_call_seconds=60.0,
    )


def terminate_the_drainer(sv: Services) -> None:
    """What a database restart does to a drain: every other backend of the database goes."""
    with sv.db.session() as session:
        session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )


def queue_record(session: Session, frame: int) -> None:
    record_in_catalog(
        session,
        "session-1",
        object_id="o",
        customer_id="c",
        frame_number=frame,
        image_file_path=f"c/o/{frame:03d}.png",
    )


def add_one_frame_workload(session: Session, workload_id: str, *, customer_id: str) -> None:
    """A running workload whose one frame is rendered, its catalog record still to go."""
    session.add(
        Workload(
            id=workload_id,
            customer_id=customer_id,
            object_id="o",
            status="running",
            target_user_count=1,
            total_frames=1,
            rendered_frames=1,
        )
    )
    session.flush()


def warm_pool(sv: Services, connections: int) -> None:
    """Leave several idle connections in the pool, as a busy worker process has."""
    held = [sv.db.engine.connect() for _ in range(connections)]
    for connection in held:
        connection.execute(text("SELECT 1"))
    for connection in held:
        connection.close()


@pytest.mark.commits
def test_a_lane_another_drainer_is_claiming_is_left_to_it(sv: Services) -> None:
    users = FlakyUsers(fail_once=set())
    queue_lists(sv, ("u1", "u1-first"), ("u2", "u2-only"))

    with sv.db.transaction() as other:
        other.execute(
            text("SELECT pg_advisory_xact_lock(:lock_class, hashtext('user-service:u1'))"),
            {"lock_class": LANE_LOCK_CLASS},
        )
        result = drain(sv.db, sv.publisher, peer_clients(users=users))

    assert users.delivered == [("u2", "u2-only")]
    assert (result.sent, result.lanes_busy) == (1, 1)
    drain(sv.db, sv.publisher, peer_clients(users=users))
    assert users.delivered == [("u2", "u2-only"), ("u1", "u1-first")]


@pytest.mark.commits
def test_drainers_at_once_share_the_lanes_each_sent_by_one_in_order(sv: Services) -> None:
    """Two drainers side by side: every message sent once, each workload's catalog records
    one at a time (and oldest first), each user's lists in order, lanes in parallel."""
    warm_pool(sv, 6)
    lock = threading.Lock()
    in_flight: dict[str, int] = {}
    most_at_once = {"lanes": 0}
    records: list[tuple[str, int]] = []

    class Catalog:
        def add_rendered_image(self, **record: Any) -> None:
            workload = record["customer_id"]
            with lock:
                in_flight[workload] = in_flight.get(workload, 0) + 1
                assert in_flight[workload] == 1, f"two records of {workload} in flight"
                most_at_once["lanes"] = max(most_at_once["lanes"], sum(in_flight.values()))
            time.sleep(0.005)
            with lock:
                in_flight[workload] -= 1
                records.append((workload, record["frame_number"]))

    users = FlakyUsers(fail_once=set())
    with sv.db.transaction() as session:
        for frame in range(10):
            for workload in ("w1", "w2", "w3", "w4"):
                record_in_catalog(
                    session,
                    workload,
                    object_id="o",
                    customer_id=workload,
                    frame_number=frame,
                    image_file_path=f"{workload}/o/{frame:03d}.png",
                )
            for user in ("u1", "u2"):
                to_users(session, "w1", [user], "start-rendering", lambda _u, f=frame: {"label": f})
    peers = peer_clients(users=users, catalog=Catalog())
    results: list[Any] = []

    def drain_until_empty() -> None:
        while True:
            result = drain(sv.db, sv.publisher, peers, batch_size=7)
            results.append(result)
            with sv.db.session() as session:
                if not session.scalar(select(func.count()).select_from(OutboxMessage)):
                    return
            time.sleep(0.001)

    drainers = [threading.Thread(target=drain_until_empty) for _ in range(2)]
    for drainer in drainers:
        drainer.start()
    for drainer in drainers:
        drainer.join(30)

    assert sorted(records) == sorted((w, f) for w in ("w1", "w2", "w3", "w4") for f in range(10))
    for workload in ("w1", "w2", "w3", "w4"):
        assert [f for w, f in records if w == workload] == list(range(10))
    for user in ("u1", "u2"):
        assert [label for u, label in users.delivered if u == user] == list(range(10))
    assert most_at_once["lanes"] > 1, "catalog lanes never ran side by side"
    assert sum(result.sent for result in results) == 60


class FlakyUsers:
    """A User Service that fails each listed message's first send, transiently."""

    def __init__(self, fail_once: set[str]) -> None:
        self.fail_once = set(fail_once)
        self.delivered: list[tuple[str, str]] = []

    def send(self, user_id: str, topic: str, data: dict[str, Any]) -> None:
        if data["label"] in self.fail_once:
            self.fail_once.discard(data["label"])
            raise PeerError("user-service", "send-msg-to-user", "down", status=503)
        self.delivered.append((user_id, data["label"]))


def queue_lists(sv: Services, *messages: tuple[str, str]) -> None:
    with sv.db.transaction() as session:
        for user, label in messages:
            to_users(
                session, "session-1", [user], "start-rendering", lambda _u, lb=label: {"label": lb}
            )


def test_a_newer_message_never_overtakes_an_older_one_waiting_for_a_retry(
    sv: Services,
) -> None:
    users = FlakyUsers(fail_once={"u1-first"})
    peers = peer_clients(users=users, catalog=None, blob=None)
    queue_lists(sv, ("u1", "u1-first"), ("u1", "u1-second"), ("u2", "u2-only"))

    first = drain(sv.db, sv.publisher, peers)
    second = drain(sv.db, sv.publisher, peers)

    assert (first.sent, first.failed) == (0, 1)
    assert users.delivered == [("u2", "u2-only")], "u1's second list must wait for its first"
    assert second.sent == 1
    with sv.db.transaction() as session:
        session.execute(update(OutboxMessage).values(available_at=func.now()))
    drain(sv.db, sv.publisher, peers)
    assert users.delivered == [("u2", "u2-only"), ("u1", "u1-first"), ("u1", "u1-second")]


@pytest.mark.commits
def test_each_catalog_record_is_deleted_before_the_next_is_sent(sv: Services) -> None:
    """A crash may resend only the record in flight: catalog records are not idempotent."""
    seen_waiting: list[int] = []

    class Catalog:
        def add_rendered_image(self, **_record: Any) -> None:
            with sv.db.session() as session:
                seen_waiting.append(
                    session.scalar(
                        select(func.count())
                        .select_from(OutboxMessage)
                        .where(OutboxMessage.destination == CATALOG)
                    )
                    or 0
                )

    with sv.db.transaction() as session:
        for frame in range(5):
            queue_record(session, frame)
    peers = peer_clients(users=None, catalog=Catalog(), blob=None)

    result = drain(sv.db, sv.publisher, peers)

    assert result.sent == 5
    assert seen_waiting == [5, 4, 3, 2, 1]


@pytest.mark.commits
def test_a_record_another_drainer_leased_is_left_to_it(sv: Services) -> None:
    """What another drainer leased (it may be sending it, or be a drainer whose connection
    was killed) this one must not send too, nor the rest of that workload's lane: one
    record of a workload in flight at a time."""
    sent: list[int] = []
    ids: dict[int, int] = {}

    class Catalog:
        def add_rendered_image(self, **record: Any) -> None:
            sent.append(record["frame_number"])
            if record["frame_number"] == 0:
                # Meanwhile another drainer leases frame 1's record (this drain has read it).
                with sv.db.transaction() as other:
                    other.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == ids[1])
                        .values(available_at=func.now() + text("interval '1 minute'"))
                    )

    with sv.db.transaction() as session:
        for frame in range(3):
            queue_record(session, frame)
        session.flush()
        for row in session.scalars(select(OutboxMessage)):
            ids[row.body["frame_number"]] = row.id

    result = drain(sv.db, sv.publisher, peer_clients(catalog=Catalog()))

    assert sent == [0]
    assert result.sent == 1
    with sv.db.session() as session:
        left = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        assert [row.id for row in left] == [ids[1], ids[2]]


def test_a_failed_record_leases_nothing_more(sv: Services) -> None:
    """After a failure the records behind it stay due for the next drain, not leased."""

    class Catalog:
        def add_rendered_image(self, **record: Any) -> None:
            raise PeerError("catalog", "add-rendered-image", "down", status=503)

    with sv.db.transaction() as session:
        for frame in range(3):
            queue_record(session, frame)

    result = drain(sv.db, sv.publisher, peer_clients(catalog=Catalog()))

    assert (result.sent, result.failed) == (0, 1)
    with sv.db.session() as session:
        due = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.available_at <= func.now())
        )
    assert due == 2


@pytest.mark.commits
def test_a_record_sent_just_before_the_drain_loses_its_connection_is_not_sent_again(
    sv: Services,
) -> None:
    calls: list[int] = []

    class Catalog:
        def add_rendered_image(self, **record: Any) -> None:
            calls.append(record["frame_number"])
            terminate_the_drainer(sv)

    with sv.db.transaction() as session:
        queue_record(session, 7)
    peers = peer_clients(users=None, catalog=Catalog(), blob=None)

    with pytest.raises(OperationalError):
        drain(sv.db, sv.publisher, peers)
    drain(sv.db, sv.publisher, peers)

    assert calls == [7]


@pytest.mark.commits
def test_a_record_sent_before_the_drain_loses_its_connection_still_counts(
    sv: Services,
) -> None:
    """The drain's rollback undoes the count with the delete: both are redone together on a
    fresh connection, or the workload would wait for that record for ever."""

    class Catalog:
        def add_rendered_image(self, **_record: Any) -> None:
            terminate_the_drainer(sv)

    with sv.db.transaction() as session:
        add_one_frame_workload(session, "session-1", customer_id="c")
        queue_record(session, 7)
    peers = peer_clients(users=None, catalog=Catalog(), blob=None)

    with pytest.raises(OperationalError):
        drain(sv.db, sv.publisher, peers)

    with sv.db.session() as session:
        assert session.get(Workload, "session-1").recorded_frames == 1
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


@pytest.mark.commits
def test_a_record_whose_send_ends_after_the_drain_lost_its_connection_is_not_sent_again(
    sv: Services,
) -> None:
    """Two workloads' records go side by side. One send kills the drain's connection; the
    other finishes only after the drain failed to settle the first (seen in the fault
    suite: that record was sent again when its lease ran out)."""
    settle_failed = threading.Event()
    calls: list[str] = []

    class SettleFailure(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "lost its database connection" in record.getMessage():
                settle_failed.set()

    class Catalog:
        def add_rendered_image(self, **record: Any) -> None:
            calls.append(record["customer_id"])
            if record["customer_id"] == "killer":
                terminate_the_drainer(sv)
            else:
                assert settle_failed.wait(10), "the drain never failed"

    with sv.db.transaction() as session:
        for workload, customer in (("session-1", "killer"), ("session-2", "late")):
            record_in_catalog(
                session,
                workload,
                object_id="o",
                customer_id=customer,
                frame_number=7,
                image_file_path=f"{customer}/o/007.png",
            )
    peers = peer_clients(users=None, catalog=Catalog(), blob=None)
    handler = SettleFailure()
    logging.getLogger("supervisor.outbox.drainer").addHandler(handler)
    try:
        with pytest.raises(OperationalError):
            drain(sv.db, sv.publisher, peers)
    finally:
        logging.getLogger("supervisor.outbox.drainer").removeHandler(handler)

    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    drain(sv.db, sv.publisher, peers)
    assert sorted(calls) == ["killer", "late"]


def test_catalog_records_do_not_wait_for_slow_deletions(sv: Services) -> None:
    """The one-at-a-time catalog lane runs while the pool sends the idempotent messages:
    a slow Blob Service must not hold back the records until every deletion of the drain
    is done."""
    release = threading.Event()
    recorded_while_deleting: list[bool] = []

    class Blob:
        def delete_temp(self, key: str) -> None:
            assert release.wait(10), "the drain never let the catalog lane run"

    class Catalog:
        def add_rendered_image(self, **record: Any) -> None:
            recorded_while_deleting.append(not release.is_set())
            if record["frame_number"] == 2:
                release.set()

    with sv.db.transaction() as session:
        for frame in range(3):
            delete_temp_blob(session, "session-1", f"temp/s/u/{frame}.png")
            queue_record(session, frame)
    peers = peer_clients(users=None, catalog=Catalog(), blob=Blob())

    result = drain(sv.db, sv.publisher, peers)

    assert recorded_while_deleting == [True, True, True]
    assert (result.sent, result.failed, result.remaining) == (6, 0, 0)
    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


@pytest.mark.commits
def test_a_drain_that_loses_its_database_stops_sending_what_it_cannot_settle(
    sv: Services,
) -> None:
    deleted: list[str] = []

    class Blob:
        def delete_temp(self, key: str) -> None:
            time.sleep(0.02)
            deleted.append(key)

    class Catalog:
        def add_rendered_image(self, **_record: Any) -> None:
            terminate_the_drainer(sv)

    with sv.db.transaction() as session:
        queue_record(session, 1)
        for frame in range(100):
            delete_temp_blob(session, "session-1", f"temp/s/u/{frame}.png")
    peers = peer_clients(users=None, catalog=Catalog(), blob=Blob())

    with pytest.raises(OperationalError):
        drain(sv.db, sv.publisher, peers)

    assert len(deleted) < 50, f"{len(deleted)} deletions sent after the drain had failed"


class RecordingUserManager:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def register_session(self, session_id: str, user_count: int) -> None:
        self.log.append(f"{session_id}:new-session")

    def cleanup_session(self, session_id: str) -> None:
        self.log.append(f"{session_id}:cleanup-session")


def test_user_manager_messages_wait_for_an_older_stop_work_of_their_workload(
    sv: Services,
) -> None:
    """The User Manager hands released users on at once: a `stop-work` arriving after the
    release would stop the next session's work."""
    log: list[str] = []

    class Users:
        fail = True

        def send(self, user_id: str, topic: str, data: dict[str, Any]) -> None:
            if self.fail:
                raise PeerError("user-service", "send-msg-to-user", "down", status=503)
            log.append(f"{user_id}:{topic}")

    users = Users()
    publisher = SimpleNamespace(publish=lambda body: log.append(f"{body['topic']}"))
    peers = peer_clients(users=users, user_manager=RecordingUserManager(log))
    with sv.db.transaction() as session:
        to_user_manager(session, "w1", "remove-users-demand-completely", {})
        to_users(session, "w1", ["u1"], "stop-work", lambda _u: {})
        to_user_manager(session, "w1", "users-released", {"user_list": ["u1"]})
        to_user_manager(session, "w1", "cleanup-session", {})
        to_user_manager(session, "w2", "update-user-count", {"user_count": 1})

    first = drain(sv.db, publisher, peers)

    assert log == ["remove-users-demand-completely", "update-user-count"]
    assert (first.sent, first.failed) == (2, 1)
    users.fail = False
    with sv.db.transaction() as session:
        session.execute(update(OutboxMessage).values(available_at=func.now()))
    for _ in range(3):
        drain(sv.db, publisher, peers)

    assert log == [
        "remove-users-demand-completely",
        "update-user-count",
        "u1:stop-work",
        "users-released",
        "w1:cleanup-session",
    ]
    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


@pytest.mark.commits
def test_a_drainer_leaves_when_all_that_is_due_is_another_drainers(
    sv: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the drain-again flag is always set: a drainer that finds every due lane
    held by another must leave, not go round for ever claiming nothing."""
    from supervisor.outbox import rounds

    drains: list[int] = []
    real_drain = rounds.drain

    def counted(*args: Any, **kwargs: Any) -> Any:
        drains.append(1)
        sv.redis.set(rounds.DRAIN_AGAIN_KEY, 1)  # commits keep arriving
        return real_drain(*args, **kwargs)

    monkeypatch.setattr(rounds, "drain", counted)
    queue_lists(sv, ("u1", "u1-first"))
    users = FlakyUsers(fail_once=set())
    with sv.db.transaction() as other:
        other.execute(
            text("SELECT pg_advisory_xact_lock(:lock_class, hashtext('user-service:u1'))"),
            {"lock_class": LANE_LOCK_CLASS},
        )
        sent = rounds.drain_until_quiet(sv.db, sv.publisher, peer_clients(users=users), sv.redis)

    assert (sent, len(drains), users.delivered) == (0, 1, [])


@pytest.mark.commits
def test_a_settle_locks_its_workloads_in_id_order_as_the_pipeline_does(sv: Services) -> None:
    """The pipeline locks workload rows in id order; a settle counting records on several
    workloads must too, or the two deadlock. While a pipeline transaction holds the first
    workload, a settle waits for it holding none of the others."""
    workload_ids = [f"w{index}" for index in range(8)]
    with sv.db.transaction() as session:
        for workload_id in workload_ids:
            add_one_frame_workload(session, workload_id, customer_id=workload_id)
        for workload_id in workload_ids:
            record_in_catalog(
                session,
                workload_id,
                object_id="o",
                customer_id=workload_id,
                frame_number=1,
                image_file_path=f"{workload_id}/o/001.png",
            )
    with sv.db.session() as session:
        sent = list(session.scalars(select(OutboxMessage.id)))
    completed: list[list[str]] = []

    def settle() -> None:
        with sv.db.transaction() as session:
            completed.append(_forget_sent(session, sent, [], timedelta(seconds=60))[0])

    with sv.db.session() as pipeline, sv.db.session() as prober:
        pipeline.execute(text("SELECT id FROM workloads WHERE id = 'w0' FOR UPDATE"))
        settler = threading.Thread(target=settle)
        settler.start()
        time.sleep(0.5)
        free = []
        for workload_id in workload_ids[1:]:
            try:
                with prober.begin_nested():
                    prober.execute(
                        text("SELECT id FROM workloads WHERE id = :id FOR UPDATE NOWAIT"),
                        {"id": workload_id},
                    )
                free.append(workload_id)
            except OperationalError:
                pass
        prober.rollback()
        pipeline.rollback()
    settler.join(10)

    assert free == workload_ids[1:], "the settle took later workloads before the first"
    assert sorted(completed[0]) == workload_ids


def hold_lane(sv: Services, lane: str, release: threading.Event) -> threading.Thread:
    """Another drainer's claim on `lane`, held until `release` is set; started and holding
    when this returns."""
    holding = threading.Event()

    def hold() -> None:
        with sv.db.transaction() as other:
            other.execute(
                text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:lane))"),
                {"lock_class": LANE_LOCK_CLASS, "lane": lane},
            )
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    return holder


@pytest.mark.commits
def test_an_inline_drain_waits_for_a_lane_another_drainer_holds(
    sv: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inline there is no beat to send later what another drainer held back."""
    users = FlakyUsers(fail_once=set())
    monkeypatch.setattr(sv, "peers", peer_clients(users=users))
    queue_lists(sv, ("u1", "u1-first"), ("u2", "u2-only"))
    release = threading.Event()
    holder = hold_lane(sv, "user-service:u1", release)
    threading.Timer(0.3, release.set).start()

    sv.jobs.drain_outbox()
    holder.join(5)

    assert users.delivered == [("u2", "u2-only"), ("u1", "u1-first")]


@pytest.mark.commits
def test_an_inline_drain_gives_up_on_a_lane_held_past_its_wait(
    sv: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor import inline

    monkeypatch.setattr(inline, "INLINE_DRAIN_WAIT_SECONDS", 0.2)
    users = FlakyUsers(fail_once=set())
    monkeypatch.setattr(sv, "peers", peer_clients(users=users))
    queue_lists(sv, ("u1", "u1-first"), ("u2", "u2-only"))
    release = threading.Event()
    holder = hold_lane(sv, "user-service:u1", release)
    try:
        started = time.monotonic()
        sv.jobs.drain_outbox()
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(5)

    assert users.delivered == [("u2", "u2-only")]
    assert 0.2 <= waited < 5
    with sv.db.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 1
