"""The dashboard's two documents: every active and recent workload, and one workload in
detail (its frame grid, last frames, users, timeline and ETA). Read-only, and bounded: the
cost of a document grows with a workload's users and events shown, never with its frames
(the grid comes from at most GRID_CELLS counters plus the few frames out with users or
failed, see supervisor/frames/grid.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from supervisor.errors import NoActiveWorkload
from supervisor.frames import grid, latest
from supervisor.keys import validate_id
from supervisor.models import ACTIVE_STATUSES
from supervisor.workloads import estimates

if TYPE_CHECKING:
    from supervisor.services import Services

LAST_FRAMES = 8
MAX_USERS = 200
MAX_EVENTS = 50
MAX_LISTED = 200
RECENT_SECONDS = 24 * 3600
# Failed frames waiting are bounded by users and their failure budget; this keeps a
# pathological workload's document bounded too.
MAX_FAILED_READ = 100_000

_WORKLOAD = (
    "SELECT w.id, w.customer_id, w.object_id, w.status, w.failure_reason, w.total_frames, "  # noqa: S608 (constant fragments, values are bound)
    "w.rendered_frames, w.recorded_frames, w.target_user_count, w.frame_start, w.frame_step, "
    "w.created_at, w.started_at, w.finished_at, " + estimates.PACES_COLUMNS + " "
    "FROM (SELECT * FROM workloads WHERE customer_id = :customer_id "
    " ORDER BY created_at DESC, status IN ('initialized', 'running') DESC LIMIT 1) AS w "
    + estimates.PACES_LATERAL
)
_LISTED = (
    "SELECT w.id, w.customer_id, w.object_id, w.status, w.total_frames, w.rendered_frames, "  # noqa: S608 (constant fragments, values are bound)
    "w.target_user_count, w.created_at, w.finished_at, " + estimates.PACES_COLUMNS + " "
    "FROM (SELECT * FROM workloads WHERE status IN ('initialized', 'running') "
    " OR finished_at > now() - make_interval(secs => :recent) "
    " ORDER BY status IN ('initialized', 'running') DESC, "
    " CASE WHEN status IN ('initialized', 'running') THEN created_at END, "
    " finished_at DESC, customer_id LIMIT :limit) AS w " + estimates.PACES_LATERAL
)
# Frames out with users or failed, counted per cell in the database: each part walks its
# own partial index (assigned, storing, failed and waiting), so the reads are as many as
# those frames, and at most GRID_CELLS rows come back.
_CELL = "((number - :first) / :step) / :size"
_OTHER_CELLS = text(
    f"SELECT {_CELL} AS cell, "  # noqa: S608 (constant fragments, values are bound)
    "count(*) FILTER (WHERE kind = 'out' AND attempts <= 1) AS assigned, "
    "count(*) FILTER (WHERE kind = 'out' AND attempts > 1) AS rerendering, "
    "count(*) FILTER (WHERE kind = 'failed') AS failed FROM ("
    " SELECT number, attempts, 'out' AS kind FROM frames "
    " WHERE workload_id = :workload_id AND state = 'assigned' "
    " UNION ALL SELECT number, attempts, 'out' FROM frames "
    " WHERE workload_id = :workload_id AND state = 'storing' "
    " UNION ALL (SELECT number, attempts, 'failed' FROM frames "
    " WHERE workload_id = :workload_id AND state = 'pending' AND last_error IS NOT NULL "
    " LIMIT :failed_limit)) AS f GROUP BY 1"
)
_BUCKETS = text("SELECT bucket, rendered FROM frame_buckets WHERE workload_id = :workload_id")
_USERS = text(
    "SELECT u.user_id, u.state, u.frames_done, u.busy_seconds, u.failed_frames, "
    "u.last_seen_at, COALESCE(h.held, 0) AS held FROM workload_users u "
    "LEFT JOIN (SELECT user_id, count(*) AS held FROM frames "
    " WHERE workload_id = :workload_id AND state = 'assigned' GROUP BY user_id) AS h "
    " ON h.user_id = u.user_id "
    "WHERE u.workload_id = :workload_id "
    "ORDER BY u.state = 'active' DESC, u.frames_done DESC, u.user_id LIMIT :limit"
)
_USER_TOTAL = text("SELECT count(*) FROM workload_users WHERE workload_id = :workload_id")
_EVENTS = text(
    "SELECT at, kind, user_id, frames, detail FROM workload_events "
    "WHERE workload_id = :workload_id ORDER BY id DESC LIMIT :limit"
)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _unix_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _percentage(done: int, total: int) -> float:
    return round(100.0 * done / total, 2) if total else 0.0


def _eta(row: Any) -> dict[str, Any]:
    arrays = (row.paces, row.spreads, row.samples, row.in_hand, row.held, row.list_starts)
    return estimates.workload_eta(
        row.status, row.total_frames, row.rendered_frames, row.target_user_count, arrays
    )


def workload_list(sv: Services) -> dict[str, Any]:
    """Active workloads (oldest first), then those ended in the last day (newest first)."""
    now = time.time()
    with sv.db.session() as session:
        rows = session.execute(text(_LISTED), {"recent": RECENT_SECONDS, "limit": MAX_LISTED}).all()
    workloads = [
        {
            "session_id": row.id,
            "customer_id": row.customer_id,
            "object_id": row.object_id,
            "status": row.status,
            "total_frames": row.total_frames,
            "rendered_frames": row.rendered_frames,
            "progress_percentage": _percentage(row.rendered_frames, row.total_frames),
            "frames_per_second": _rate(sv, row.id, row.status, now),
            "active_users": row.active_users,
            "eta": _eta(row),
            "created_at": _iso(row.created_at),
            "finished_at": _iso(row.finished_at),
        }
        for row in rows
    ]
    return {"generated_at": _unix_iso(now), "workloads": workloads}


def workload_document(sv: Services, customer_id: str) -> dict[str, Any]:
    """The customer's latest workload in detail."""
    validate_id("customer_id", customer_id)
    now = time.time()
    with sv.db.session() as session:
        row = session.execute(text(_WORKLOAD), {"customer_id": customer_id}).one_or_none()
        if row is None:
            raise NoActiveWorkload(f"No workload for customer_id: {customer_id}")
        frame_grid = _grid(session, row)
        users = _users(session, row.id)
        events = session.execute(_EVENTS, {"workload_id": row.id, "limit": MAX_EVENTS}).all()
    stored = latest.latest(sv.redis, row.id)
    document = {
        "generated_at": _unix_iso(now),
        "workload": {
            "session_id": row.id,
            "customer_id": row.customer_id,
            "object_id": row.object_id,
            "status": row.status,
            "failure_reason": row.failure_reason,
            "total_frames": row.total_frames,
            "rendered_frames": row.rendered_frames,
            "recorded_frames": row.recorded_frames,
            "progress_percentage": _percentage(row.rendered_frames, row.total_frames),
            "frames_per_second": (
                latest.frames_per_second(stored, now) if row.status in ACTIVE_STATUSES else None
            ),
            "active_users": row.active_users,
            "target_user_count": row.target_user_count,
            "created_at": _iso(row.created_at),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
        },
        "eta": _eta(row),
        "grid": frame_grid,
        "last_frames": [
            {
                "frame": frame.frame,
                "rendered_at": _unix_iso(frame.at),
                "user_id": frame.user_id,
                "thumbnail_url": thumbnail_path(row.id, frame.frame),
            }
            for frame in stored[:LAST_FRAMES]
        ],
        "users": users,
        "timeline": [
            {
                "at": _iso(event.at),
                "kind": event.kind,
                "user_id": event.user_id,
                "frames": event.frames,
                "detail": event.detail,
            }
            for event in events
        ],
    }
    return document


def _rate(sv: Services, workload_id: str, status: str, now: float) -> float | None:
    """Frames stored per second lately; none once the workload has ended."""
    if status not in ACTIVE_STATUSES:
        return None
    return latest.frames_per_second(latest.latest(sv.redis, workload_id), now)


def thumbnail_path(session_id: str, frame: int) -> str:
    return f"/dashboard/api/sessions/{session_id}/frames/{frame}/thumbnail"


def _grid(session: Session, row: Any) -> dict[str, Any]:
    total = row.total_frames
    size = grid.bucket_frames(total)
    cells = grid.cell_count(total)
    counts = {state: [0] * cells for state in ("rendered", "assigned", "rerendering", "failed")}
    first, step = row.frame_start or 0, row.frame_step or 1
    params = {"workload_id": row.id}
    for bucket, rendered in session.execute(_BUCKETS, params):
        if 0 <= bucket < cells:
            counts["rendered"][bucket] = rendered
    others = session.execute(
        _OTHER_CELLS,
        {**params, "first": first, "step": step, "size": size, "failed_limit": MAX_FAILED_READ},
    )
    for cell, assigned, rerendering, failed in others:
        if 0 <= cell < cells:
            counts["assigned"][cell] = assigned
            counts["rerendering"][cell] = rerendering
            counts["failed"][cell] = failed
    return {
        "cells": cells,
        "bucket_frames": size,
        "first_frame": first,
        "frame_step": step,
        "total_frames": total,
        **counts,
    }


def _users(session: Session, workload_id: str) -> dict[str, Any]:
    params = {"workload_id": workload_id}
    rows = session.execute(_USERS, {**params, "limit": MAX_USERS}).all()
    total = session.scalar(_USER_TOTAL, params) or 0
    return {
        "total": total,
        "truncated": total > len(rows),
        "items": [
            {
                "user_id": row.user_id,
                "state": row.state,
                "frames_done": row.frames_done,
                "frames_per_minute": (
                    round(60.0 * row.frames_done / row.busy_seconds, 2)
                    if row.busy_seconds > 0
                    else None
                ),
                "frames_held": row.held,
                "last_seen_at": _iso(row.last_seen_at),
                "failures": row.failed_frames,
                "banned": row.state == "banned",
            }
            for row in rows
        ],
    }
