"""Transactional outbox: messages are written with the state change that decided them and
sent only after that commit. A failed send stays in the table and is retried with backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from queue import SimpleQueue
from typing import Any, Protocol

from redis import Redis
from sqlalchemy import Select, and_, case, func, literal_column, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased

from supervisor.db import Database
from supervisor.errors import PeerError
from supervisor.messaging import user_manager_body
from supervisor.models import OutboxMessage

logger = logging.getLogger(__name__)

USER_MANAGER = "user-manager"
USER_SERVICE = "user-service"
CATALOG = "catalog"
BLOB_TEMP = "blob-temp"

OUTBOX_DRAIN_LOCK_ID = 0x5E55_0B0C
MAX_BACKOFF = timedelta(seconds=30)
SEND_CONCURRENCY = 8
SEND_CHUNK = 32
ONE_AT_A_TIME = frozenset({CATALOG})
_DELETE_SENT = text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[]))")


class BodyPublisher(Protocol):
    def publish(self, body: dict[str, Any]) -> None: ...


class PeerClients(Protocol):
    """The slice of supervisor.peers.Peers the outbox sends through."""

    users: Any
    catalog: Any
    blob: Any
    user_manager: Any


def to_user_manager(session: Session, workload_id: str, topic: str, data: dict[str, Any]) -> None:
    """Queue a message for USER_MANAGER_EXCHANGE in the caller's transaction."""
    session.add(
        OutboxMessage(
            workload_id=workload_id,
            destination=USER_MANAGER,
            topic=topic,
            body=user_manager_body(topic, workload_id, data),
        )
    )


def register_with_user_manager(session: Session, workload_id: str, user_count: int) -> None:
    """Queue `new-session` (HTTP) in the workload's User Manager order: it goes before the
    demand queued after it, which a User Manager that forgot us would otherwise drop."""
    to_user_manager(session, workload_id, "new-session", {"user_count": user_count})


def cleanup_user_manager_session(session: Session, workload_id: str) -> None:
    """Queue `cleanup-session` (HTTP), after whatever the workload sent the User Manager."""
    to_user_manager(session, workload_id, "cleanup-session", {})


def to_users(
    session: Session,
    workload_id: str,
    user_ids: Iterable[str],
    topic: str,
    data_for: Callable[[str], dict[str, Any]],
) -> None:
    """Queue one User Service message per user in the caller's transaction."""
    session.add_all(
        OutboxMessage(
            workload_id=workload_id,
            destination=USER_SERVICE,
            topic=topic,
            body={"user_id": user_id, "topic": topic, "data": data_for(user_id)},
        )
        for user_id in user_ids
    )


def record_in_catalog(
    session: Session,
    workload_id: str,
    *,
    object_id: str,
    customer_id: str,
    frame_number: int,
    image_file_path: str,
) -> None:
    """Queue the catalog record of a stored frame, in the transaction that marks it rendered."""
    session.add(
        OutboxMessage(
            workload_id=workload_id,
            destination=CATALOG,
            topic="add-rendered-image",
            body={
                "object_id": object_id,
                "customer_id": customer_id,
                "frame_number": frame_number,
                "image_file_path": image_file_path,
            },
        )
    )


def change_object_state(
    session: Session, workload_id: str, *, object_id: str, customer_id: str, state: str
) -> None:
    """Queue the catalog's `change-state` of the workload's object."""
    session.add(
        OutboxMessage(
            workload_id=workload_id,
            destination=CATALOG,
            topic="change-state",
            body={"object_id": object_id, "customer_id": customer_id, "state": state},
        )
    )


def delete_temp_blob(session: Session, workload_id: str, key: str) -> None:
    """Queue the removal of an uploaded temporary image; removal is idempotent."""
    session.add(
        OutboxMessage(
            workload_id=workload_id, destination=BLOB_TEMP, topic="delete-temp", body={"key": key}
        )
    )


RecordsDone = Callable[[list[str]], None]


@dataclass
class DrainResult:
    locked: bool = False
    sent: int = 0
    failed: int = 0
    remaining: int = 0
    all_recorded: list[str] = field(default_factory=list)


def drain(
    db: Database,
    publisher: BodyPublisher,
    peers: PeerClients,
    *,
    batch_size: int = 500,
    wait_seconds: float = 0.0,
    on_all_recorded: RecordsDone | None = None,
) -> DrainResult:
    """Send what is due, oldest first. One drainer at a time keeps the order per destination;
    the first transient failure of a destination stops it until its backoff expires, and a
    permanent one (the peer refused the message) drops that message with a log line.
    With `wait_seconds`, a drainer waits that long for one already at work; by default it
    returns at once with `locked` False (see drain_until_quiet).

    Each catalog record deleted as sent counts on its workload's `recorded_frames` in the
    same commit; `on_all_recorded` then hears of the running workloads whose every frame
    is recorded (it completes them; beat's sweep does it if this call is missed)."""
    result = DrainResult()
    # A session-level lock belongs to one connection: pin it, or a commit hands the
    # connection back to the pool and the unlock runs on another one, leaking the lock.
    with (
        db.engine.connect() as connection,
        Session(bind=connection, expire_on_commit=False) as session,
    ):
        locked = _wait_for_drain_lock(session, wait_seconds)
        session.commit()
        if not locked:
            return result
        result.locked = True
        try:
            _drain_locked(db, session, publisher, peers, batch_size, result)
        finally:
            session.rollback()
            session.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": OUTBOX_DRAIN_LOCK_ID})
            session.commit()
    if result.all_recorded and on_all_recorded is not None:
        on_all_recorded(result.all_recorded)
    return result


def _drain_locked(
    db: Database,
    session: Session,
    publisher: BodyPublisher,
    peers: PeerClients,
    batch_size: int,
    result: DrainResult,
) -> None:
    """Messages a repeat cannot harm (temp deletions, users' lists, User Manager demands)
    go SEND_CONCURRENCY at a time on a pool. Catalog records, which a repeat would
    duplicate, go one by one on this thread meanwhile, each deleted in its own commit right
    after its send (with whatever the pool has finished meanwhile), so a crash resends at
    most the one record in flight. The database is used from this thread only."""
    due = session.execute(_due(batch_size)).all()
    rows = [row for row, _key in due]
    session.commit()
    blocked: set[str] = set()
    jobs = _jobs((row, key) for row, key in due if row.destination not in ONE_AT_A_TIME)
    finished: SimpleQueue[Future[_JobOutcome]] = SimpleQueue()
    pool = ThreadPoolExecutor(max_workers=SEND_CONCURRENCY, thread_name_prefix="outbox")
    try:
        for job in jobs:
            pool.submit(_send_in_order, publisher, peers, blocked, job).add_done_callback(
                finished.put
            )
        unsettled = len(jobs)
        for row in rows:
            if row.destination in ONE_AT_A_TIME:
                sent = _send_in_order(publisher, peers, blocked, [row])
                ready = _take_ready(finished)
                unsettled -= len(ready)
                _settle(db, session, [sent, *ready], result)
        while unsettled:
            chunk = [finished.get().result() for _ in range(min(SEND_CHUNK, unsettled))]
            unsettled -= len(chunk)
            _settle(db, session, chunk, result)
    finally:
        # A drain that failed (its database went away) stops sending what it cannot
        # settle: queued jobs are dropped, only those already sending finish.
        pool.shutdown(wait=True, cancel_futures=True)
    result.remaining = len(rows) - result.sent


def _take_ready(finished: SimpleQueue[Future[_JobOutcome]]) -> list[_JobOutcome]:
    """The outcomes of the jobs the pool has finished so far, without waiting."""
    ready: list[_JobOutcome] = []
    while not finished.empty():
        ready.append(finished.get_nowait().result())
    return ready


def _settle(
    db: Database, session: Session, outcomes: list[_JobOutcome], result: DrainResult
) -> None:
    """Delete what was sent and postpone what failed, in one commit. If the drain's own
    connection died meanwhile (a restarted or killed backend), the sent rows are deleted
    through a fresh one before the drain gives up, so they are not sent a second time."""
    done = [row.id for outcome in outcomes for row in outcome.done]
    try:
        if done:
            session.execute(_DELETE_SENT, {"ids": done})
            result.all_recorded += _count_records(session, outcomes)
            _note_lists_delivered(session, outcomes)
        for outcome in outcomes:
            if outcome.failed is not None:
                _postpone(session, *outcome.failed)
        session.commit()
    except OperationalError:
        if done:
            # The rollback undid the count too: the records were sent, so count them here.
            with db.transaction() as fresh:
                fresh.execute(_DELETE_SENT, {"ids": done})
                _count_records(fresh, outcomes)
            logger.warning(
                "outbox drain lost its database connection; sent messages forgotten anyway",
                extra={"sent": len(done)},
            )
        raise
    for outcome in outcomes:
        result.sent += outcome.sent
        if outcome.failed is not None:
            result.failed += 1


_COUNT_RECORDS = text(
    "UPDATE workloads AS w SET recorded_frames = w.recorded_frames + r.n "
    "FROM (SELECT id, count(*) AS n FROM unnest(CAST(:ids AS varchar[])) AS id GROUP BY id) "
    "AS r WHERE w.id = r.id "
    "RETURNING w.id, w.status = 'running' AND w.recorded_frames = w.total_frames AS all_in"
)


def _count_records(session: Session, outcomes: list[_JobOutcome]) -> list[str]:
    """Count the catalog records just settled on their workloads; the running workloads
    that now have every frame recorded. A record the catalog refused for good counts too:
    it was logged, and waiting for it would leave the workload running for ever."""
    workload_ids = [
        row.workload_id
        for outcome in outcomes
        for row in outcome.done
        if row.destination == CATALOG and row.topic == "add-rendered-image" and row.workload_id
    ]
    if not workload_ids:
        return []
    rows = session.execute(_COUNT_RECORDS, {"ids": workload_ids}).all()
    return [row.id for row in rows if row.all_in]


_LISTS_DELIVERED = text(
    "UPDATE workload_users AS u SET clock_at = now() "
    "FROM unnest(CAST(:workload_ids AS varchar[]), CAST(:user_ids AS varchar[])) "
    "AS t(workload_id, user_id) "
    "WHERE u.workload_id = t.workload_id AND u.user_id = t.user_id"
)


def _note_lists_delivered(session: Session, outcomes: list[_JobOutcome]) -> None:
    """A user's list starts when it is delivered, not when it was decided: its rate, and
    how long it may stay silent, count from here (a User Service outage is not its fault)."""
    delivered = sorted(
        {
            (row.workload_id, row.body["user_id"])
            for outcome in outcomes
            for row in outcome.done
            if row.destination == USER_SERVICE and row.topic == "start-rendering"
        }
    )
    if delivered:
        session.execute(
            _LISTS_DELIVERED,
            {"workload_ids": [w for w, _ in delivered], "user_ids": [u for _, u in delivered]},
        )


def _jobs(due: Iterable[tuple[OutboxMessage, str | None]]) -> list[list[OutboxMessage]]:
    """One job per order key (its rows oldest first), one per row without a key."""
    jobs: list[list[OutboxMessage]] = []
    by_key: dict[str, list[OutboxMessage]] = {}
    for row, key in due:
        if key is None:
            jobs.append([row])
        elif key in by_key:
            by_key[key].append(row)
        else:
            by_key[key] = [row]
            jobs.append(by_key[key])
    return jobs


@dataclass
class _JobOutcome:
    done: list[OutboxMessage] = field(default_factory=list)
    sent: int = 0
    failed: tuple[OutboxMessage, Exception] | None = None


def _send_in_order(
    publisher: BodyPublisher, peers: PeerClients, blocked: set[str], job: list[OutboxMessage]
) -> _JobOutcome:
    """Send a job's rows in order; stop at the first transient failure (the rest wait for
    it), and skip a destination another job found failing. A row its peer refused for good
    is logged and done with (deleted, never resent)."""
    outcome = _JobOutcome()
    for row in job:
        if row.destination in blocked:
            break
        try:
            _send(row, publisher, peers)
            outcome.sent += 1
        except PeerError as exc:
            if exc.transient:
                blocked.add(row.destination)
                outcome.failed = (row, exc)
                break
            _log_dropped(row, exc)
        except Exception as exc:  # noqa: BLE001 (any other send failure is kept and retried)
            blocked.add(row.destination)
            outcome.failed = (row, exc)
            break
        outcome.done.append(row)
    return outcome


def _order_key(message: type[OutboxMessage] | Any) -> Any:
    """What a destination must receive in order: a user's lists replace each other, and the
    User Manager reads a workload's demands in sequence. Catalog records and temp deletions
    have no order (NULL)."""
    return case(
        (message.destination == USER_SERVICE, message.body["user_id"].astext),
        (message.destination == USER_MANAGER, message.workload_id),
        else_=None,
    )


def _keyed(message: type[OutboxMessage] | Any) -> Any:
    """The order key, prefixed with the destination so keys of two destinations differ."""
    return message.destination + ":" + _order_key(message)


def _due(limit: int) -> Select[tuple[OutboxMessage, str | None]]:
    """Due rows, oldest first, leaving out any row queued behind an older one of the same
    order key that waits for its retry, so a retried message is never overtaken. The heads
    are computed once (a materialized CTE), not once per candidate row."""
    waiting = aliased(OutboxMessage)
    heads = (
        select(
            waiting.destination,
            _order_key(waiting).label("order_key"),
            func.min(waiting.id).label("first_waiting"),
        )
        .where(waiting.available_at > func.now(), _order_key(waiting).is_not(None))
        .group_by(literal_column("1"), literal_column("2"))
        .cte("heads")
        .prefix_with("MATERIALIZED")
    )
    behind_a_retry = (
        select(heads.c.first_waiting)
        .where(
            heads.c.destination == OutboxMessage.destination,
            heads.c.order_key == _order_key(OutboxMessage),
            heads.c.first_waiting < OutboxMessage.id,
        )
        .exists()
    )
    return (
        select(OutboxMessage, _keyed(OutboxMessage).label("order_key"))
        .where(OutboxMessage.available_at <= func.now(), ~behind_a_retry, ~_behind_stop_work())
        .order_by(OutboxMessage.id)
        .limit(limit)
    )


def _behind_stop_work() -> Any:
    """A workload's User Manager messages wait until its older `stop-work`s are sent: the
    User Manager hands released users to another session at once, and a late `stop-work`
    would then stop that session's work. (All of them wait, not only `users-released`,
    so that the ones after it keep their order.)"""
    earlier = aliased(OutboxMessage)
    return and_(
        OutboxMessage.destination == USER_MANAGER,
        select(earlier.id)
        .where(
            earlier.workload_id == OutboxMessage.workload_id,
            earlier.destination == USER_SERVICE,
            earlier.topic == "stop-work",
            earlier.id < OutboxMessage.id,
        )
        .exists(),
    )


def _wait_for_drain_lock(session: Session, wait_seconds: float) -> bool:
    """A session-level advisory lock: it outlives the per-row commits of the drain."""
    if wait_seconds <= 0:
        return bool(
            session.execute(
                text("SELECT pg_try_advisory_lock(:id)"), {"id": OUTBOX_DRAIN_LOCK_ID}
            ).scalar_one()
        )
    session.execute(text(f"SET LOCAL lock_timeout = '{int(wait_seconds * 1000)}ms'"))
    try:
        with session.begin_nested():
            session.execute(text("SELECT pg_advisory_lock(:id)"), {"id": OUTBOX_DRAIN_LOCK_ID})
    except OperationalError:
        return False
    return True


DRAIN_AGAIN_KEY = "supervisor:outbox:drain-again"
DRAIN_SCHEDULED_KEY = "supervisor:outbox:drain-scheduled"


def request_drain(redis: Redis) -> bool:
    """Note that rows were committed; True when the caller should dispatch a drain (none is
    scheduled yet). Coalesces a burst of commits into one drain instead of one each."""
    redis.set(DRAIN_AGAIN_KEY, 1, ex=60)
    return bool(redis.set(DRAIN_SCHEDULED_KEY, 1, nx=True, ex=5))


def drain_until_quiet(
    db: Database,
    publisher: BodyPublisher,
    peers: PeerClients,
    redis: Redis,
    *,
    rounds: int = 50,
    on_all_recorded: RecordsDone | None = None,
) -> int:
    """Drain while there is work or commits arrived meanwhile. A drainer that finds the
    lock taken asks the holder (through the flag) to go round once more, and leaves."""
    redis.delete(DRAIN_SCHEDULED_KEY)
    sent = 0
    for _ in range(rounds):
        redis.delete(DRAIN_AGAIN_KEY)
        result = drain(db, publisher, peers, on_all_recorded=on_all_recorded)
        if not result.locked:
            redis.set(DRAIN_AGAIN_KEY, 1, ex=60)
            return sent
        sent += result.sent
        if result.failed:
            return sent
        # One more round after any send: rows held back behind a sent one are due now.
        quiet = result.sent == 0 and not result.all_recorded
        if result.remaining == 0 and quiet and not redis.get(DRAIN_AGAIN_KEY):
            return sent
    return sent


def _send(row: OutboxMessage, publisher: BodyPublisher, peers: PeerClients) -> None:
    body = row.body
    if row.destination == USER_MANAGER:
        _send_to_user_manager(row, publisher, peers)
    elif row.destination == USER_SERVICE:
        peers.users.send(body["user_id"], body["topic"], body["data"])
    elif row.destination == CATALOG and row.topic == "change-state":
        peers.catalog.change_state(**body)
    elif row.destination == CATALOG:
        peers.catalog.add_rendered_image(**body)
    elif row.destination == BLOB_TEMP:
        peers.blob.delete_temp(body["key"])
    else:
        raise ValueError(f"unknown outbox destination {row.destination!r}")
    logger.info(
        "outbox message sent",
        extra={
            "workload_id": row.workload_id,
            "destination": row.destination,
            "topic": row.topic,
            "user_id": body.get("user_id"),
        },
    )


def _send_to_user_manager(row: OutboxMessage, publisher: BodyPublisher, peers: PeerClients) -> None:
    """Registration and clean-up are HTTP calls, the rest AMQP; all in one order per
    workload, so `new-session` precedes the demand after it, and `cleanup-session` the
    release before it."""
    if row.topic == "new-session":
        peers.user_manager.register_session(row.workload_id, row.body["data"]["user_count"])
    elif row.topic == "cleanup-session":
        peers.user_manager.cleanup_session(row.workload_id)
    else:
        publisher.publish(row.body)


def _log_dropped(row: OutboxMessage, exc: PeerError) -> None:
    logger.warning(
        "outbox message refused by its peer, dropped",
        extra={
            "workload_id": row.workload_id,
            "destination": row.destination,
            "topic": row.topic,
            "user_id": row.body.get("user_id"),
            "error": str(exc)[:200],
        },
    )


def _postpone(session: Session, row: OutboxMessage, exc: Exception) -> None:
    attempts = row.attempts + 1
    backoff = min(timedelta(seconds=2 ** min(attempts, 10)), MAX_BACKOFF)
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == row.id)
        .values(
            attempts=attempts,
            last_error=str(exc)[:500],
            available_at=func.now() + backoff,
        )
    )
    logger.warning(
        "outbox send failed, will retry",
        extra={
            "workload_id": row.workload_id,
            "destination": row.destination,
            "topic": row.topic,
            "attempts": attempts,
            "retry_in_s": backoff.total_seconds(),
            "error": str(exc)[:200],
        },
    )


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutboxMessage)) or 0
