"""The order of sending: which rows are due, and which must wait for an older one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, and_, case, func, literal_column, or_, select
from sqlalchemy.orm import aliased

from supervisor.models import OutboxMessage
from supervisor.outbox.queueing import CATALOG, USER_MANAGER, USER_SERVICE


def group_jobs(due: Iterable[tuple[OutboxMessage, str | None]]) -> list[list[OutboxMessage]]:
    """One job per lane (its rows oldest first), one per row without a lane."""
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


def _order_key(message: type[OutboxMessage] | Any) -> Any:
    """A row's lane: what a destination must receive in order, or one at a time. A user's
    lists replace each other; the User Manager reads a workload's demands in sequence; a
    workload's catalog records go one at a time (the catalog's add is not idempotent, so a
    crash may resend only the one in flight), which keeps that guarantee per workload and
    lets the catalog lanes of different workloads run side by side. Temp deletions have no
    lane (NULL)."""
    return case(
        (message.destination == USER_SERVICE, message.body["user_id"].astext),
        (message.destination == USER_MANAGER, message.workload_id),
        (message.destination == CATALOG, func.coalesce(message.workload_id, "")),
        else_=None,
    )


def _keyed(message: type[OutboxMessage] | Any) -> Any:
    """The order key, prefixed with the destination so keys of two destinations differ."""
    return message.destination + ":" + _order_key(message)


def due_rows(
    limit: int, *, lanes: list[str] | None = None
) -> Select[tuple[OutboxMessage, str | None]]:
    """Due rows and their lanes, oldest first, leaving out any row queued behind an older
    one of its lane that waits (for its retry, or leased by a drainer), so a message is
    never overtaken. The heads are computed once (a materialized CTE), not once per
    candidate row. With `lanes`, only those lanes and rows without one, locked `FOR UPDATE
    SKIP LOCKED`: rows another drainer is claiming right now are left to it."""
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
    query = (
        select(OutboxMessage, _keyed(OutboxMessage).label("order_key"))
        .where(OutboxMessage.available_at <= func.now(), ~behind_a_retry, ~_behind_stop_work())
        .order_by(OutboxMessage.id)
        .limit(limit)
    )
    if lanes is None:
        return query
    lane = _keyed(OutboxMessage)
    return query.where(or_(lane.is_(None), lane.in_(lanes))).with_for_update(
        of=OutboxMessage, skip_locked=True
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
