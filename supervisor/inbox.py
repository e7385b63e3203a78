"""The inbox: User Manager events recorded in Postgres before their message is acked.

The intake writes one row per event of a known session (its body is the event's JSON form,
`to_body` of a supervisor.messages event) and dispatches a task with the row's id; the
task handles the event and deletes the row. Rows whose task was lost are dispatched again
by beat, so an event survives a killed worker or a flushed Redis. Handlers are idempotent,
so a second run of one changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from supervisor.db import Database
from supervisor.messages import Event, from_body
from supervisor.models import InboxEvent, Workload

logger = logging.getLogger(__name__)

GIVE_UP_AFTER_DISPATCHES = 20


def record_many(db: Database, events: Sequence[Event]) -> list[int | None]:
    """Record a batch of events in one transaction: one id per event, in order, or None for
    an event whose session is unknown (the intake refuses it)."""
    if not events:
        return []
    with db.transaction() as session:
        sessions = {event.session_id for event in events}
        known = set(session.scalars(select(Workload.id).where(Workload.id.in_(sessions))))
        wanted = [event for event in events if event.session_id in known]
        ids: list[int] = []
        if wanted:
            ids = list(
                session.scalars(
                    insert(InboxEvent).returning(InboxEvent.id, sort_by_parameter_order=True),
                    [
                        {"workload_id": e.session_id, "topic": e.topic, "body": e.to_body()}
                        for e in wanted
                    ],
                )
            )
    taken = iter(ids)
    return [next(taken) if event.session_id in known else None for event in events]


def claim_many(db: Database, inbox_ids: Sequence[int]) -> list[tuple[int, Event]]:
    """The events of these rows still to handle, oldest first (see `claim`)."""
    with db.transaction() as session:
        rows = session.execute(
            update(InboxEvent)
            .where(InboxEvent.id.in_(list(inbox_ids)))
            .values(dispatched_at=func.now(), attempts=InboxEvent.attempts + 1)
            .returning(InboxEvent.id, InboxEvent.body)
        ).all()
    return sorted((row.id, from_body(row.body)) for row in rows)


def done_many(db: Database, inbox_ids: Sequence[int]) -> None:
    if inbox_ids:
        with db.transaction() as session:
            session.execute(delete(InboxEvent).where(InboxEvent.id.in_(list(inbox_ids))))


def claim(db: Database, inbox_id: int) -> Event | None:
    """The event to handle now, or None when it was handled already; marks the attempt so
    beat does not dispatch it again while this one runs."""
    with db.transaction() as session:
        body = session.execute(
            update(InboxEvent)
            .where(InboxEvent.id == inbox_id)
            .values(dispatched_at=func.now(), attempts=InboxEvent.attempts + 1)
            .returning(InboxEvent.body)
        ).scalar_one_or_none()
    return from_body(body) if body is not None else None


def done(db: Database, inbox_id: int) -> None:
    with db.transaction() as session:
        session.execute(delete(InboxEvent).where(InboxEvent.id == inbox_id))


def note_failure(db: Database, inbox_id: int, error: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(InboxEvent).where(InboxEvent.id == inbox_id).values(last_error=error[:500])
        )


def due_again(
    db: Database, *, older_than: float, now: datetime | None = None, limit: int = 500
) -> list[tuple[int, str]]:
    """Rows no task has picked up for `older_than` seconds: (id, topic) to dispatch again.
    Rows dispatched too many times are returned with topic '' so the caller refuses them."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than)
    with db.transaction() as session:
        rows = _take_due(session, cutoff, limit)
    if rows:
        logger.warning("inbox events dispatched again", extra={"events": len(rows)})
    return rows


def _take_due(session: Session, cutoff: datetime, limit: int) -> list[tuple[int, str]]:
    due = (
        select(InboxEvent.id)
        .where(InboxEvent.dispatched_at < cutoff)
        .order_by(InboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = session.execute(
        update(InboxEvent)
        .where(InboxEvent.id.in_(due))
        .values(dispatched_at=func.now())
        .returning(InboxEvent.id, InboxEvent.topic, InboxEvent.attempts)
    ).all()
    return [
        (row.id, row.topic if row.attempts < GIVE_UP_AFTER_DISPATCHES else "")
        for row in sorted(rows)
    ]


def pending(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(InboxEvent)) or 0
