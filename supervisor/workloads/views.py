"""Read models: a customer's workload status and progress, and the session overviews of
the Customer Service and the Admin Panel. Nothing here changes state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from supervisor.errors import NoActiveWorkload
from supervisor.keys import validate_id
from supervisor.messaging import session_routing_key
from supervisor.models import ACTIVE_STATUSES
from supervisor.workloads import estimates

if TYPE_CHECKING:
    from supervisor.services import Services

# Status is polled by every customer's UI, so each read is one statement in one round trip
# (Database.read_row), written for the driver: the ORM's session and row loading cost more
# than the query. The counters are O(1) columns of the workload row; nothing counts frames.
# A stopped workload is forgotten for status and progress (the contract's "deleted"); its
# row is kept only for late users and the overview during the grace period.
_STATUS_COLUMNS = (
    "SELECT status, total_frames, rendered_frames, recorded_frames, failure_reason "
    "FROM workloads WHERE customer_id = %(customer_id)s "
)
_LATEST = _STATUS_COLUMNS + "AND status <> 'stopped' ORDER BY created_at DESC LIMIT 1"
# A start that failed since (a mistyped object id) does not hide the last good result.
_LAST_COMPLETED = _STATUS_COLUMNS + "AND status = 'completed' ORDER BY created_at DESC LIMIT 1"
# The mapping walks the partial index ix_frames_assigned_number (assigned frames only, by
# number), so its cost is the limit's, whatever the size of the workload or how far it got.
# Two arrays cost the database and the driver less than building and parsing a JSON object.
_PROGRESS = (
    "SELECT w.id, w.status, w.total_frames, w.rendered_frames, w.failure_reason, "
    "(SELECT count(*) FROM workload_users u "
    " WHERE u.workload_id = w.id AND u.state = 'active') AS active_users, "
    "m.numbers, m.users "
    "FROM (SELECT id, status, total_frames, rendered_frames, failure_reason FROM workloads "
    " WHERE customer_id = %(customer_id)s AND status <> 'stopped' "
    " ORDER BY created_at DESC LIMIT 1) AS w "
    "CROSS JOIN LATERAL (SELECT array_agg(a.number ORDER BY a.number) AS numbers, "
    " array_agg(a.user_id ORDER BY a.number) AS users FROM "
    " (SELECT f.number, f.user_id FROM frames f "
    "  WHERE f.workload_id = w.id AND f.state = 'assigned' "
    "  ORDER BY f.number LIMIT %(fetch)s) AS a) AS m"
)


def _no_workload(customer_id: str) -> NoActiveWorkload:
    return NoActiveWorkload(f"No workload for customer_id: {customer_id}")


def _percentage(done: int, total: int) -> float:
    return round(100.0 * done / total, 2) if total else 0.0


def workload_status(
    sv: Services, customer_id: str, *, last_completed: bool = False
) -> dict[str, Any]:
    """The customer's current workload, or the last one it finished, from O(1) counters.
    `completed_frames` counts frames stored; `recorded_frames` those the catalog confirmed.
    The workload is `completed` only once the catalog has every frame. With
    `last_completed`, the last workload that completed, whatever came after it."""
    validate_id("customer_id", customer_id)
    query = _LAST_COMPLETED if last_completed else _LATEST
    row = sv.db.read_row(query, {"customer_id": customer_id})
    if row is None:
        if last_completed:
            raise NoActiveWorkload(f"No completed workload for customer_id: {customer_id}")
        raise _no_workload(customer_id)
    state, total, rendered, recorded, failure_reason = row
    status: dict[str, Any] = {
        "workload_status": state,
        "total_frames": total,
        "completed_frames": rendered,
        "completion_percentage": _percentage(rendered, total),
        "stored_frames": rendered,
        "recorded_frames": recorded,
    }
    if failure_reason:
        status["failure_reason"] = failure_reason
    _add_degradation(sv, status, state)
    return status


def _add_degradation(sv: Services, body: dict[str, Any], status: str) -> None:
    """While a workload is active, name the peers it is waiting on (absent when healthy)."""
    if status in ACTIVE_STATUSES:
        degraded = sv.health.degraded()
        if degraded:
            body["degraded_peers"] = degraded


def workload_progress(sv: Services, customer_id: str) -> dict[str, Any]:
    """Counters plus the frames still out with users, lowest first; the mapping holds at
    most `progress_mapping_limit` of them, so a huge workload answers as fast as a small
    one, and `frame_mapping_truncated` says when there are more."""
    validate_id("customer_id", customer_id)
    limit = sv.settings.progress_mapping_limit
    row = sv.db.read_row(_PROGRESS, {"customer_id": customer_id, "fetch": limit + 1})
    if row is None:
        raise _no_workload(customer_id)
    workload_id, state, total, rendered, failure_reason, active_users, numbers, users = row
    numbers, users = numbers or [], users or []
    truncated = len(numbers) > limit
    pairs = zip(numbers[:limit], users[:limit], strict=True)
    mapping = {str(number): user for number, user in pairs}
    body: dict[str, Any] = {
        "total_frames": total,
        "completed_frames": rendered,
        "remaining_frames": total - rendered,
        "progress_percentage": _percentage(rendered, total),
        "workload_status": state,
        "active_users": active_users,
        "frame_mapping": mapping,
        "frame_mapping_truncated": truncated,
        # The ETA is shared by every poll of the workload for a second (estimates).
        **estimates.shared_eta(sv, workload_id, state),
    }
    if failure_reason:
        body["failure_reason"] = failure_reason
    _add_degradation(sv, body, state)
    return body


# --- overview (Customer Service, Admin Panel) -------------------------------------------

_OVERVIEW_COLUMNS = (
    "SELECT w.id, w.customer_id, w.object_id, w.status, "
    "(SELECT count(*) FROM workload_users u "
    " WHERE u.workload_id = w.id AND u.state = 'active') AS users FROM workloads w "
)


def _overview(row: Any) -> dict[str, Any]:
    return {
        "customer_id": row.customer_id,
        "object_id": row.object_id,
        "session_routing_key": session_routing_key(row.id),
        "session_id": row.id,
        "number_of_users": row.users,
        "session_status": row.status,
    }


def session_overview(sv: Services, customer_id: str) -> dict[str, Any] | None:
    """The customer's latest session, including one stopped moments ago (the Customer
    Service asks for its `session_id` right after a stop); None when it has none."""
    validate_id("customer_id", customer_id)
    with sv.db.session() as session:
        row = session.execute(
            text(
                _OVERVIEW_COLUMNS + "WHERE w.customer_id = :customer_id "
                # Ties (one transaction's now()): an active workload is the latest.
                "ORDER BY w.created_at DESC, w.status IN ('initialized', 'running') DESC "
                "LIMIT 1"
            ),
            {"customer_id": customer_id},
        ).one_or_none()
    return _overview(row) if row is not None else None


def all_overviews(sv: Services) -> list[dict[str, Any]]:
    """One overview per active workload (the Admin Panel's list)."""
    with sv.db.session() as session:
        rows = session.execute(
            text(
                _OVERVIEW_COLUMNS + "WHERE w.status IN ('initialized', 'running') "
                "ORDER BY w.created_at, w.customer_id"
            )
        ).all()
    return [_overview(row) for row in rows]
