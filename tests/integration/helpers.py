"""Helpers shared by the integration tests: what reached the peers, the outbox as queued, and
draining it all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from supervisor.models import OutboxMessage
from supervisor.services import Services


@dataclass
class PeerLog:
    """What reached the peers, in the order it was sent: the User Manager's messages
    (AMQP topics and the HTTP `new-session` / `cleanup-session` alike), the User Service's
    messages and the catalog's state changes. Only sends that succeeded are logged."""

    entries: list[tuple[str, str, Any]] = field(default_factory=list)

    def user_manager(self) -> list[tuple[str, Any]]:
        return [(topic, data) for peer, topic, data in self.entries if peer == "user-manager"]

    def user_manager_topics(self) -> list[str]:
        return [topic for topic, _data in self.user_manager()]

    def sequence(self) -> list[str]:
        """Every entry as one string: 'user-manager:<topic>', 'user:<id>:<topic>',
        'catalog:<topic>'."""
        out = []
        for peer, topic, data in self.entries:
            if peer == "user":
                out.append(f"user:{data['user_id']}:{topic}")
            else:
                out.append(f"{peer}:{topic}")
        return out


def after(call: Callable[..., Any], log: Callable[..., None]) -> Callable[..., Any]:
    """`call`, then `log` with the same arguments once `call` has returned."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        log(*args, **kwargs)
        return result

    return wrapped


def pending_outbox(sv: Services) -> list[tuple[str, str, dict[str, Any]]]:
    """(destination, topic, body) of the unsent outbox rows, in the order they were queued."""
    with sv.db.session() as session:
        rows = session.execute(
            select(OutboxMessage.destination, OutboxMessage.topic, OutboxMessage.body).order_by(
                OutboxMessage.id
            )
        ).all()
    return [(row.destination, row.topic, row.body) for row in rows]


def drain_everything(sv: Services, rounds: int = 5) -> None:
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
