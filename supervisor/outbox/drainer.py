"""The drain: one drainer at a time sends what is due and settles each send in the
database (deleted when sent, postponed with backoff when it failed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from queue import SimpleQueue

from sqlalchemy import func, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from supervisor.db import Database
from supervisor.models import OutboxMessage
from supervisor.outbox.order import due_rows, group_jobs
from supervisor.outbox.queueing import CATALOG, USER_SERVICE
from supervisor.outbox.senders import BodyPublisher, JobOutcome, PeerClients, send_in_order

logger = logging.getLogger(__name__)

OUTBOX_DRAIN_LOCK_ID = 0x5E55_0B0C
MAX_BACKOFF = timedelta(seconds=30)
SEND_CONCURRENCY = 8
SEND_CHUNK = 32
ONE_AT_A_TIME = frozenset({CATALOG})
_DELETE_SENT = text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[]))")

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
        db.connection() as connection,
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
    most the one record in flight.

    Each record is also leased before its send, in the commit that settles the one before:
    a drainer whose connection was killed (and its lock with it) may still be sending it,
    and the next lock holder must not send it too. A lease that cannot be taken (another
    drainer has the row) skips the row. The database is used from this thread only."""
    due = session.execute(due_rows(batch_size)).all()
    rows = [row for row, _key in due]
    session.commit()
    blocked: set[str] = set()
    jobs = group_jobs((row, key) for row, key in due if row.destination not in ONE_AT_A_TIME)
    one_at_a_time = [row for row in rows if row.destination in ONE_AT_A_TIME]
    lease = timedelta(seconds=peers.longest_call_seconds)
    finished: SimpleQueue[Future[JobOutcome]] = SimpleQueue()
    pool = ThreadPoolExecutor(max_workers=SEND_CONCURRENCY, thread_name_prefix="outbox")
    try:
        for job in jobs:
            pool.submit(send_in_order, publisher, peers, blocked, job).add_done_callback(
                finished.put
            )
        unsettled = len(jobs)
        leased = _lease(session, one_at_a_time[:1], lease)
        session.commit()
        for index, row in enumerate(one_at_a_time):
            outcomes = _take_ready(finished)
            unsettled -= len(outcomes)
            failed = False
            if row.id in leased:
                outcome = send_in_order(publisher, peers, blocked, [row])
                outcomes.append(outcome)
                failed = outcome.failed is not None
            # After a failure the destination waits for its retry: nothing more is leased.
            following = [] if failed else one_at_a_time[index + 1 : index + 2]
            leased = _settle(db, session, outcomes, result, lease_next=(following, lease))
            if failed:
                break
        while unsettled:
            chunk = [finished.get().result() for _ in range(min(SEND_CHUNK, unsettled))]
            unsettled -= len(chunk)
            _settle(db, session, chunk, result)
    finally:
        # A drain that failed (its database went away) stops sending what it cannot
        # settle: queued jobs are dropped, only those already sending finish.
        pool.shutdown(wait=True, cancel_futures=True)
    result.remaining = len(rows) - result.sent


def _take_ready(finished: SimpleQueue[Future[JobOutcome]]) -> list[JobOutcome]:
    """The outcomes of the jobs the pool has finished so far, without waiting."""
    ready: list[JobOutcome] = []
    while not finished.empty():
        ready.append(finished.get_nowait().result())
    return ready


_LEASE = text(
    "UPDATE outbox SET available_at = now() + CAST(:lease AS interval) "
    "WHERE id = ANY(CAST(:ids AS bigint[])) AND available_at <= now() RETURNING id"
)


def _lease(session: Session, rows: list[OutboxMessage], lease: timedelta) -> set[int]:
    """Hold these rows back from every other drainer for `lease` (as a retry's backoff
    does); the ids actually leased: not those another drainer leased or deleted first."""
    if not rows:
        return set()
    leased = session.execute(_LEASE, {"ids": [row.id for row in rows], "lease": lease})
    return {row.id for row in leased}


def _settle(
    db: Database,
    session: Session,
    outcomes: list[JobOutcome],
    result: DrainResult,
    *,
    lease_next: tuple[list[OutboxMessage], timedelta] | None = None,
) -> set[int]:
    """Delete what was sent and postpone what failed, in one commit, which also leases the
    rows of `lease_next` (returned: those leased). If the drain's own connection died
    meanwhile (a restarted or killed backend), the sent rows are deleted through a fresh
    one before the drain gives up, so they are not sent a second time."""
    done = [row.id for outcome in outcomes for row in outcome.done]
    leased: set[int] = set()
    try:
        if done:
            session.execute(_DELETE_SENT, {"ids": done})
            result.all_recorded += _count_records(session, outcomes)
            _note_lists_delivered(session, outcomes)
        for outcome in outcomes:
            if outcome.failed is not None:
                _postpone(session, *outcome.failed)
        if lease_next is not None:
            leased = _lease(session, *lease_next)
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
    return leased


_COUNT_RECORDS = text(
    "UPDATE workloads AS w SET recorded_frames = w.recorded_frames + r.n "
    "FROM (SELECT id, count(*) AS n FROM unnest(CAST(:ids AS varchar[])) AS id GROUP BY id) "
    "AS r WHERE w.id = r.id "
    "RETURNING w.id, w.status = 'running' AND w.recorded_frames = w.total_frames AS all_in"
)


def _count_records(session: Session, outcomes: list[JobOutcome]) -> list[str]:
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
    "UPDATE workload_users AS u SET clock_at = now(), clock_from_list = true "
    "FROM unnest(CAST(:workload_ids AS varchar[]), CAST(:user_ids AS varchar[])) "
    "AS t(workload_id, user_id) "
    "WHERE u.workload_id = t.workload_id AND u.user_id = t.user_id"
)


def _note_lists_delivered(session: Session, outcomes: list[JobOutcome]) -> None:
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
