"""The ETA of a workload (supervisor/eta.py) from what the database knows of its active
users: each one's pace, the frames it holds, and how long it has had the frame in hand.

PACES_LATERAL is a fragment for a statement whose workload is `w`: one row of arrays, one
element per active user. Its cost grows with the workload's users and the frames they hold
(one pass over the partial index of assigned frames), never with its frames. The progress
route reads the ETA through `shared_eta`, computed at most once a second per workload."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from supervisor import eta
from supervisor.models import ACTIVE_STATUSES, WorkloadStatus
from supervisor.snapshots import MAX_AGE_MS, shared

if TYPE_CHECKING:
    from supervisor.services import Services

PACES_LATERAL = (
    "CROSS JOIN LATERAL (SELECT count(*) AS active_users, "
    " array_agg(u.pace_seconds) AS paces, array_agg(u.pace_spread) AS spreads, "
    " array_agg(u.pace_samples) AS samples, "
    " array_agg(CAST(EXTRACT(EPOCH FROM now() - u.clock_at) AS float8)) AS in_hand, "
    " array_agg(COALESCE(h.held, 0)) AS held, array_agg(u.list_start_seconds) AS list_starts "
    " FROM workload_users u LEFT JOIN (SELECT f.user_id, count(*) AS held FROM frames f "
    "  WHERE f.workload_id = w.id AND f.state = 'assigned' GROUP BY f.user_id) AS h "
    "  ON h.user_id = u.user_id "
    " WHERE u.workload_id = w.id AND u.state = 'active') AS p"
)
PACES_COLUMNS = "p.active_users, p.paces, p.spreads, p.samples, p.in_hand, p.held, p.list_starts"
_PACES_OF = text(
    "SELECT w.total_frames, w.rendered_frames, w.target_user_count, "  # noqa: S608 (constant fragments, values are bound)
    + PACES_COLUMNS
    + " FROM (SELECT id, total_frames, rendered_frames, target_user_count FROM workloads "
    "WHERE id = :workload_id) AS w " + PACES_LATERAL
)


def paces(
    paces: Sequence[float | None] | None,
    spreads: Sequence[float | None] | None,
    samples: Sequence[int] | None,
    in_hand: Sequence[float | None] | None,
    held: Sequence[int] | None,
    list_starts: Sequence[float | None] | None,
) -> list[eta.Pace]:
    """The arrays of PACES_COLUMNS (after active_users) as one Pace per user."""
    if not paces or not spreads or not samples or not in_hand or not held or not list_starts:
        return []
    return [
        eta.Pace(
            frame_seconds=pace,
            spread_seconds=spread,
            samples=count,
            in_hand_seconds=hand if holding else None,
            held=holding,
            list_start_seconds=list_start,
        )
        for pace, spread, count, hand, holding, list_start in zip(
            paces, spreads, samples, in_hand, held, list_starts, strict=True
        )
    ]


def ended(status: str) -> dict[str, Any]:
    """The ETA keys of a workload that is no longer active."""
    done = 0.0 if status == WorkloadStatus.COMPLETED else None
    return {
        "eta_seconds": done,
        "eta_low_seconds": done,
        "eta_high_seconds": done,
        "eta_basis": "ended",
    }


def workload_eta(
    status: str, total: int, rendered: int, target_users: int, arrays: Sequence[Any]
) -> dict[str, Any]:
    """The progress body's ETA keys for a workload in `status`; `arrays` are PACES_COLUMNS
    after active_users."""
    if status not in ACTIVE_STATUSES:
        return ended(status)
    estimate = eta.estimate(total - rendered, paces(*arrays), expected_users=target_users)
    return estimate.as_progress_keys()


def shared_eta(sv: Services, workload_id: str, status: str) -> dict[str, Any]:
    """The ETA keys of a workload, computed at most once a second for every reader."""
    if status not in ACTIVE_STATUSES:
        return ended(status)

    def compute() -> dict[str, Any]:
        with sv.db.session() as session:
            row = session.execute(_PACES_OF, {"workload_id": workload_id}).one()
        arrays = (row.paces, row.spreads, row.samples, row.in_hand, row.held, row.list_starts)
        return workload_eta(
            status, row.total_frames, row.rendered_frames, row.target_user_count, arrays
        )

    def stamped() -> dict[str, Any]:
        return {"computed_at": time.time(), "keys": compute()}

    now = time.time()
    kept = _fresh_here.get(workload_id)
    if kept is None or now - kept["computed_at"] >= MAX_AGE_MS / 1000:
        kept = json.loads(shared(sv.redis, f"supervisor:eta:{workload_id}", stamped).body)
        _keep_here(workload_id, kept, now)
    return age(kept["keys"], now - kept["computed_at"])


# The last answer of each workload in this process. While it is under MAX_AGE_MS old, Redis
# holds it as fresh and would answer it again (no one recomputes a fresh answer), so the
# copy saves a Redis round trip per progress poll and answers the same. One entry per
# workload polled lately.
_fresh_here: dict[str, dict[str, Any]] = {}
_KEPT_HERE_MAX = 1024


def _keep_here(workload_id: str, kept: dict[str, Any], now: float) -> None:
    if len(_fresh_here) >= _KEPT_HERE_MAX:
        for old_id, old in list(_fresh_here.items()):
            if now - old["computed_at"] >= MAX_AGE_MS / 1000:
                _fresh_here.pop(old_id, None)
    _fresh_here[workload_id] = kept


def age(keys: dict[str, Any], seconds: float) -> dict[str, Any]:
    """ETA keys computed `seconds` ago, as of now: a kept answer is up to a second old, and
    near the end a second is a good part of what is left."""
    aged = dict(keys)
    for name in ("eta_seconds", "eta_low_seconds", "eta_high_seconds"):
        if aged.get(name) is not None:
            aged[name] = round(max(0.0, aged[name] - max(0.0, seconds)), 1)
    return aged
