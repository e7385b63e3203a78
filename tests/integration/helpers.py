"""Helpers shared by the integration tests: the outbox as queued, and draining it all."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from supervisor.models import OutboxMessage
from supervisor.service import Supervisor


def pending_outbox(sv: Supervisor) -> list[tuple[str, str, dict[str, Any]]]:
    """(destination, topic, body) of the unsent outbox rows, in the order they were queued."""
    with sv.db.session() as session:
        rows = session.execute(
            select(OutboxMessage.destination, OutboxMessage.topic, OutboxMessage.body).order_by(
                OutboxMessage.id
            )
        ).all()
    return [(row.destination, row.topic, row.body) for row in rows]


def drain_everything(sv: Supervisor, rounds: int = 5) -> None:
    """Drain (with the completion hook) until the outbox stops shrinking. One drain pass
    leaves the User Manager rows queued behind a `stop-work` it sent in the same pass."""
    for _ in range(rounds):
        with sv.db.session() as session:
            before = session.scalar(select(func.count()).select_from(OutboxMessage))
        if not before:
            return
        sv.jobs.drain_outbox()
        with sv.db.session() as session:
            after = session.scalar(select(func.count()).select_from(OutboxMessage))
        if after == before:
            return
