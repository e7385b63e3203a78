"""The order of sending: which rows are due, their lanes, and which wait for an older one.

The due query runs every drain round; it is plain SQL composed once, here, because building
and compiling it as an expression cost the drainer more CPU than running it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, text

from supervisor.outbox.queueing import CATALOG, USER_MANAGER, USER_SERVICE


@dataclass(frozen=True, slots=True)
class Due:
    """An outbox row to send, as the drainer reads it."""

    id: int
    workload_id: str | None
    destination: str
    topic: str
    body: dict[str, Any]
    attempts: int


def group_jobs(due: Iterable[tuple[Due, str | None]]) -> list[list[Due]]:
    """One job per lane (its rows oldest first), one per row without a lane."""
    jobs: list[list[Due]] = []
    by_key: dict[str, list[Due]] = {}
    for row, key in due:
        if key is None:
            jobs.append([row])
        elif key in by_key:
            by_key[key].append(row)
        else:
            by_key[key] = [row]
            jobs.append(by_key[key])
    return jobs


def _order_key(row: str) -> str:
    """A row's lane within its destination: what the destination must receive in order, or
    one at a time. A user's lists replace each other; the User Manager reads a workload's
    demands in sequence; a workload's catalog records go one at a time (the catalog's add
    is not idempotent, so a crash may resend only the one in flight), which keeps that
    guarantee per workload and lets the catalog lanes of different workloads run side by
    side. Temp deletions have no lane (NULL)."""
    return (
        f"CASE WHEN {row}.destination = '{USER_SERVICE}' THEN {row}.body ->> 'user_id' "
        f"WHEN {row}.destination = '{USER_MANAGER}' THEN {row}.workload_id "
        f"WHEN {row}.destination = '{CATALOG}' THEN coalesce({row}.workload_id, '') END"
    )


def _due_sql(*, only_lanes: bool) -> str:
    """Due rows and their lanes, oldest first, leaving out:
    - any row queued behind an older one of its lane that waits (for its retry, or leased
      by a drainer), so a message is never overtaken; the heads are computed once (a
      materialized CTE), not once per candidate row;
    - a workload's User Manager messages while an older `stop-work` of it is unsent: the
      User Manager hands released users to another session at once, and a late `stop-work`
      would then stop that session's work (all of them wait, not only `users-released`, so
      that the ones after it keep their order).
    `only_lanes`: only the lanes in `:lanes` and rows without one, locked `FOR UPDATE SKIP
    LOCKED`, so rows another drainer is claiming right now are left to it."""
    lane = f"o.destination || ':' || ({_order_key('o')})"
    in_lanes = f" AND (({lane}) IS NULL OR ({lane}) = ANY(CAST(:lanes AS text[])))"
    # Composed from this module's constants only; every value is bound.
    return (
        "WITH heads AS MATERIALIZED ("  # noqa: S608
        f" SELECT w.destination, {_order_key('w')} AS order_key, min(w.id) AS first_waiting"
        " FROM outbox AS w"
        f" WHERE w.available_at > now() AND ({_order_key('w')}) IS NOT NULL GROUP BY 1, 2) "
        f"SELECT o.id, o.workload_id, o.destination, o.topic, o.body, o.attempts, {lane} AS lane"
        " FROM outbox AS o WHERE o.available_at <= now()"
        " AND NOT EXISTS (SELECT 1 FROM heads AS h WHERE h.destination = o.destination"
        f"  AND h.order_key = ({_order_key('o')}) AND h.first_waiting < o.id)"
        f" AND NOT (o.destination = '{USER_MANAGER}' AND EXISTS (SELECT 1 FROM outbox AS e"
        "  WHERE e.workload_id = o.workload_id"
        f"  AND e.destination = '{USER_SERVICE}' AND e.topic = 'stop-work' AND e.id < o.id))"
        + (in_lanes if only_lanes else "")
        + " ORDER BY o.id LIMIT :limit"
        + (" FOR UPDATE OF o SKIP LOCKED" if only_lanes else "")
    )


_DUE: TextClause = text(_due_sql(only_lanes=False))
_DUE_IN_LANES: TextClause = text(_due_sql(only_lanes=True))


def due_rows(
    connection: Any, limit: int, *, lanes: Sequence[str] | None = None
) -> list[tuple[Due, str | None]]:
    """The due rows (see _due_sql) and their lanes, on `connection` (a Connection or a
    Session); with `lanes`, only those lanes and rows without one, locked for this
    transaction, skipping rows another drainer has locked."""
    if lanes is None:
        result = connection.execute(_DUE, {"limit": limit})
    else:
        result = connection.execute(_DUE_IN_LANES, {"limit": limit, "lanes": list(lanes)})
    return [(Due(*row[:6]), row[6]) for row in result]
