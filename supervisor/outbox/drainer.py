"""The drain: independent lanes, any number of drainers at once.

A lane is what must be sent in order, or one at a time: a user's User Service messages,
a workload's User Manager messages, a workload's catalog messages (outbox.order). A
drainer claims lanes (a transaction-level advisory lock per lane while it claims, then a
lease on the rows it will send, which holds the rest of each lane back from every other
drainer) and sends them; rows without a lane (temp deletions) are claimed one by one with
`FOR UPDATE SKIP LOCKED`. So N worker processes on N machines drain side by side, and no
lane is ever sent by two at once. Each send is settled in the database: deleted when sent,
postponed with backoff when it failed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from queue import SimpleQueue

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from supervisor.db import Database
from supervisor.outbox.order import Due, due_rows, group_jobs
from supervisor.outbox.queueing import CATALOG, CLEANUP_SESSION, USER_SERVICE
from supervisor.outbox.senders import BodyPublisher, JobOutcome, PeerClients, send_in_order

logger = logging.getLogger(__name__)

# The first key of the two-key advisory locks on lanes (the second is the lane's hash).
LANE_LOCK_CLASS = 0x5E55_0B0C
MAX_BACKOFF = timedelta(seconds=30)
SEND_CONCURRENCY = 8
# Catalog lanes send on a pool of their own, so slow temp deletions never hold them back.
CATALOG_CONCURRENCY = 8
SEND_CHUNK = 32
_LOCK_LANES = text(
    "SELECT lane FROM unnest(CAST(:lanes AS text[])) AS lane "
    "WHERE pg_try_advisory_xact_lock(:lock_class, hashtext(lane))"
)
# Each row of a lane is leased for as many calls as are sent before it and itself, so a
# long lane's last rows stay held back however slowly the first ones go.
_LEASE = text(
    "UPDATE outbox AS o SET available_at = now() + CAST(:lease AS interval) * t.position "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:positions AS int[])) AS t(id, position) "
    "WHERE o.id = t.id AND o.available_at <= now() RETURNING o.id"
)
_RELEASE = text(
    "UPDATE outbox SET available_at = now() WHERE id = ANY(CAST(:ids AS bigint[])) "
    "AND available_at > now()"
)

RecordsDone = Callable[[list[str]], None]


@dataclass
class DrainResult:
    sent: int = 0
    failed: int = 0
    # Rows claimed but not sent (behind a failure, or dropped when the drain failed).
    remaining: int = 0
    # Lanes another drainer was claiming at that moment: its rows are left to it.
    lanes_busy: int = 0
    dropped: int = 0
    all_recorded: list[str] = field(default_factory=list)


def drain(
    db: Database,
    publisher: BodyPublisher,
    peers: PeerClients,
    *,
    batch_size: int = 500,
    on_all_recorded: RecordsDone | None = None,
) -> DrainResult:
    """Claim the due lanes no other drainer holds and send them: each lane oldest first,
    catalog lanes one record at a time. The first transient failure of a destination stops
    it until its backoff expires; a permanent one (the peer refused the message) drops that
    message with a log line.

    Each catalog record deleted as sent counts on its workload's `recorded_frames` in the
    same commit; `on_all_recorded` then hears of the running workloads whose every frame
    is recorded (it completes them; beat's sweep does it if this call is missed)."""
    result = DrainResult()
    lease = timedelta(seconds=peers.longest_call_seconds)
    # One connection for the whole drain: it settles many small commits.
    with (
        db.connection() as connection,
        Session(bind=connection, expire_on_commit=False) as session,
    ):
        jobs = _claim(session, batch_size, lease, result)
        if jobs:
            try:
                _send_claimed(db, session, publisher, peers, jobs, lease, result)
            finally:
                session.rollback()
    if result.all_recorded and on_all_recorded is not None:
        on_all_recorded(result.all_recorded)
    return result


def _claim(
    session: Session, batch_size: int, lease: timedelta, result: DrainResult
) -> list[list[Due]]:
    """The jobs this drainer now owns, one per lane (oldest first) and one per row without
    a lane, their rows leased in one commit. A catalog lane's head alone is leased: the
    rest follow one by one, each leased in the commit that settles the one before, so a
    crash resends at most one record per workload (the catalog's add is not idempotent).

    The lane locks are taken before the rows are read again, and held until the leases
    commit: whatever another drainer leased before is seen, and holds the lane back."""
    seen = due_rows(session, batch_size)
    if not seen:
        session.commit()
        return []
    lanes = sorted({lane for _row, lane in seen if lane is not None})
    locked = (
        list(session.scalars(_LOCK_LANES, {"lanes": lanes, "lock_class": LANE_LOCK_CLASS}))
        if lanes
        else []
    )
    result.lanes_busy = len(lanes) - len(locked)
    jobs = group_jobs(due_rows(session, batch_size, lanes=locked))
    heads = [job[:1] if job[0].destination == CATALOG else job for job in jobs]
    leased = _lease(session, [row for rows in heads for row in rows], lease, restart_each=heads)
    session.commit()
    owned = []
    for job in jobs:
        # A lane stops at its first row not leased: another drainer has it.
        taken = next((i for i, row in enumerate(job) if row.id not in leased), len(job))
        if job[0].destination == CATALOG:
            taken = len(job) if taken else 0
        if taken:
            owned.append(job[:taken])
    return owned


@dataclass
class _Sent:
    """A job's send: the rows sent in this call, what came of them, and the rest of its
    catalog lane (sent next, once this is settled)."""

    rows: list[Due]
    outcome: JobOutcome
    lane_rest: list[Due]


def _send_claimed(
    db: Database,
    session: Session,
    publisher: BodyPublisher,
    peers: PeerClients,
    jobs: list[list[Due]],
    lease: timedelta,
    result: DrainResult,
) -> None:
    """Idempotent messages (temp deletions, users' lists, User Manager messages) go
    SEND_CONCURRENCY jobs at a time; catalog lanes CATALOG_CONCURRENCY at a time, a record
    each. This thread settles what the pools finish, a chunk per commit, and hands each
    catalog lane its next record once the one before is deleted. The database is used
    from this thread only."""
    blocked: set[str] = set()
    finished: SimpleQueue[Future[_Sent]] = SimpleQueue()
    general = ThreadPoolExecutor(max_workers=SEND_CONCURRENCY, thread_name_prefix="outbox")
    catalog = ThreadPoolExecutor(max_workers=CATALOG_CONCURRENCY, thread_name_prefix="catalog")

    def send(rows: list[Due], lane_rest: list[Due]) -> _Sent:
        return _Sent(rows, send_in_order(publisher, peers, blocked, rows), lane_rest)

    def submit(rows: list[Due], lane_rest: list[Due]) -> None:
        pool = catalog if rows[0].destination == CATALOG else general
        pool.submit(send, rows, lane_rest).add_done_callback(finished.put)

    claimed = sum(len(job) for job in jobs)
    in_flight = 0
    try:
        for job in jobs:
            if job[0].destination == CATALOG:
                submit(job[:1], job[1:])
            else:
                submit(job, [])
            in_flight += 1
        while in_flight:
            ready = [finished.get().result()]
            while len(ready) < SEND_CHUNK and not finished.empty():
                ready.append(finished.get_nowait().result())
            in_flight -= len(ready)
            following = [
                sent.lane_rest[0]
                for sent in ready
                if sent.lane_rest and sent.outcome.failed is None
            ]
            leased = _settle(db, session, ready, result, lease_next=following, lease=lease)
            for sent in ready:
                if sent.lane_rest and sent.lane_rest[0].id in leased:
                    submit(sent.lane_rest[:1], sent.lane_rest[1:])
                    in_flight += 1
    except OperationalError:
        # Sends that finished after the failed settle went out too: forget them as well.
        _stop_sending(general, catalog)
        _forget_after_loss(db, _finished_outcomes(finished), lease)
        raise
    finally:
        _stop_sending(general, catalog)
    result.remaining = claimed - result.sent - result.dropped


def _stop_sending(*pools: ThreadPoolExecutor) -> None:
    """A drain that failed (its database went away) stops sending what it cannot settle:
    queued jobs are dropped, only those already sending finish."""
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _finished_outcomes(finished: SimpleQueue[Future[_Sent]]) -> list[JobOutcome]:
    """What the stopped pools sent that was never settled (a dropped job was not sent)."""
    outcomes = []
    while not finished.empty():
        future = finished.get_nowait()
        if not future.cancelled() and future.exception() is None:
            outcomes.append(future.result().outcome)
    return outcomes


def _lease(
    session: Session,
    rows: list[Due],
    lease: timedelta,
    *,
    restart_each: list[list[Due]] | None = None,
) -> set[int]:
    """Hold these rows back from every other drainer (as a retry's backoff does); the ids
    actually leased: not those another drainer leased or deleted first. With
    `restart_each`, the rows are those jobs', and each row's lease lasts for the calls
    sent before it in its job and its own."""
    if not rows:
        return set()
    if restart_each is None:
        positions = [1] * len(rows)
    else:
        positions = [position for job in restart_each for position in range(1, len(job) + 1)]
    leased = session.execute(
        _LEASE, {"ids": [row.id for row in rows], "positions": positions, "lease": lease}
    )
    return {row.id for row in leased}


def _settle(
    db: Database,
    session: Session,
    sends: list[_Sent],
    result: DrainResult,
    *,
    lease_next: list[Due],
    lease: timedelta,
) -> set[int]:
    """Delete what was sent, postpone what failed and hand back what a failure left unsent,
    in one commit, which also leases `lease_next` (returned: the ids leased). If the
    drain's own connection died meanwhile (a restarted or killed backend), the sent rows
    are deleted through a fresh one before the drain gives up, so they are not sent a
    second time."""
    outcomes = [sent.outcome for sent in sends]
    done = [row.id for outcome in outcomes for row in outcome.done]
    unsent = _unsent(sends)
    leased: set[int] = set()
    try:
        if _note_cleanups_sent(session, outcomes):
            session.commit()
        if done or lease_next:
            all_in, leased = _forget_sent(session, done, [row.id for row in lease_next], lease)
            result.all_recorded += all_in
        if done:
            _note_lists_delivered(session, outcomes)
        for outcome in outcomes:
            if outcome.failed is not None:
                _postpone(session, *outcome.failed)
        if unsent:
            session.execute(_RELEASE, {"ids": unsent})
        session.commit()
    except OperationalError:
        _forget_after_loss(db, outcomes, lease)
        raise
    for outcome in outcomes:
        result.sent += outcome.sent
        result.dropped += len(outcome.done) - outcome.sent
        if outcome.failed is not None:
            result.failed += 1
    return leased


def _forget_after_loss(db: Database, outcomes: list[JobOutcome], lease: timedelta) -> None:
    """The drain's connection died: what was sent is deleted (and its records counted, as
    the rollback undid that too) through a fresh connection, so it is not sent again."""
    done = [row.id for outcome in outcomes for row in outcome.done]
    if not done:
        return
    with db.transaction() as fresh:
        _note_cleanups_sent(fresh, outcomes)
    with db.transaction() as fresh:
        _forget_sent(fresh, done, [], lease)
    logger.warning(
        "outbox drain lost its database connection; sent messages forgotten anyway",
        extra={"sent": len(done)},
    )


def _unsent(sends: list[_Sent]) -> list[int]:
    """Rows of a job left behind its failure: their lease is given back, so they follow
    the failed row as soon as its retry is sent."""
    unsent = []
    for sent in sends:
        handled = {row.id for row in sent.outcome.done}
        if sent.outcome.failed is not None:
            handled.add(sent.outcome.failed[0].id)
        unsent += [row.id for row in sent.rows if row.id not in handled]
    return unsent


# One round trip for what most commits of a drain do: delete what was sent, count the
# catalog records among it on their workloads (a record the catalog refused for good counts
# too: it was logged, and waiting for it would leave the workload running for ever), and
# lease each catalog lane's next record.
_FORGET_SENT = text(
    "WITH sent AS (DELETE FROM outbox WHERE id = ANY(CAST(:done AS bigint[])) "
    " RETURNING workload_id, destination, topic), "
    "recorded AS (SELECT workload_id, count(*) AS n FROM sent WHERE destination = :catalog "
    " AND topic = 'add-rendered-image' AND workload_id IS NOT NULL GROUP BY workload_id), "
    # In id order, as the pipeline locks them (assignment.lock_workloads): no deadlock.
    "locked AS (SELECT id FROM workloads WHERE id IN (SELECT workload_id FROM recorded) "
    " ORDER BY id FOR UPDATE), "
    "counted AS (UPDATE workloads AS w SET recorded_frames = w.recorded_frames + r.n "
    " FROM recorded AS r JOIN locked AS l ON l.id = r.workload_id WHERE w.id = r.workload_id "
    " RETURNING w.id, w.status = 'running' AND w.recorded_frames = w.total_frames AS all_in), "
    "leased AS (UPDATE outbox SET available_at = now() + CAST(:lease AS interval) "
    " WHERE id = ANY(CAST(:next AS bigint[])) AND available_at <= now() RETURNING id) "
    "SELECT id AS workload_id, NULL AS leased FROM counted WHERE all_in "
    "UNION ALL SELECT NULL, id FROM leased"
)


def _forget_sent(
    session: Session, done: list[int], lease_next: list[int], lease: timedelta
) -> tuple[list[str], set[int]]:
    """Delete the sent rows, count their catalog records and lease `lease_next`: the
    running workloads that now have every frame recorded, and the ids leased."""
    rows = session.execute(
        _FORGET_SENT, {"done": done, "next": lease_next, "lease": lease, "catalog": CATALOG}
    ).all()
    all_in = [row.workload_id for row in rows if row.workload_id is not None]
    return all_in, {row.leased for row in rows if row.leased is not None}


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


# Locks in id order, as every other locker of several workloads does: no deadlock.
_CLEANUPS_SENT = text(
    "UPDATE workloads SET cleanup_sent_at = now() WHERE id IN (SELECT id FROM workloads "
    " WHERE id = ANY(CAST(:workload_ids AS varchar[])) ORDER BY id FOR UPDATE)"
)


def _note_cleanups_sent(session: Session, outcomes: list[JobOutcome]) -> bool:
    """An ended workload's grace period runs from its last `cleanup-session` (end_grace).
    The caller commits it before the row is deleted: end_grace sees the row queued or the
    new time, never neither. A commit of its own, as it locks workloads rarely (once per
    ending) and is not worth a lock order with the records' count. True if it wrote."""
    cleaned = sorted(
        {
            row.workload_id
            for outcome in outcomes
            for row in outcome.done
            if row.topic == CLEANUP_SESSION and row.workload_id is not None
        }
    )
    if cleaned:
        session.execute(_CLEANUPS_SENT, {"workload_ids": cleaned})
    return bool(cleaned)


_POSTPONE = text(
    "UPDATE outbox SET attempts = :attempts, last_error = :error, "
    "available_at = now() + CAST(:backoff AS interval) WHERE id = :id"
)


def _postpone(session: Session, row: Due, exc: Exception) -> None:
    attempts = row.attempts + 1
    backoff = min(timedelta(seconds=2 ** min(attempts, 10)), MAX_BACKOFF)
    session.execute(
        _POSTPONE,
        {"attempts": attempts, "error": str(exc)[:500], "backoff": backoff, "id": row.id},
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
