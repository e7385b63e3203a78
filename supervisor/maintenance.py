"""Periodic care of running workloads, run by beat: demand, stale frames, rebalancing.

Each function takes `now` so tests can move time forward; each workload is handled in its
own transaction under its row lock, like the event handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from supervisor import outbox
from supervisor.events import count_failure, demand_missing_users, distribute, lock_workload
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadStatus, WorkloadUser
from supervisor.workloads import send_outbox_soon

if TYPE_CHECKING:
    from supervisor.service import Supervisor

logger = logging.getLogger(__name__)


def _running_ids(sv: Supervisor) -> list[str]:
    with sv.db.session() as session:
        return list(
            session.scalars(select(Workload.id).where(Workload.status == WorkloadStatus.RUNNING))
        )


def _each_running_workload(sv: Supervisor) -> Iterator[tuple[Session, Workload]]:
    """Each running workload in its own transaction, under its row lock."""
    for workload_id in _running_ids(sv):
        with sv.db.transaction() as session:
            workload = lock_workload(session, workload_id)
            if workload is not None and workload.status == WorkloadStatus.RUNNING:
                yield session, workload


def demand_users(sv: Supervisor, now: datetime | None = None) -> dict[str, int]:
    """Ask for users a running workload lacks; repeat a demand the User Manager has not
    answered in time (as `update-user-count`, which replaces it, so nothing doubles)."""
    now = now or datetime.now(UTC)
    stale_before = now - timedelta(seconds=sv.settings.redemand_seconds)
    asked: dict[str, int] = {}
    for session, workload in _each_running_workload(sv):
        missing = demand_missing_users(session, workload)
        if missing:
            asked[workload.id] = missing
        elif workload.users_demanded > 0 and (
            workload.demanded_at is None or workload.demanded_at < stale_before
        ):
            outbox.to_user_manager(
                session, workload.id, "update-user-count", {"user_count": workload.users_demanded}
            )
            workload.demanded_at = now
            asked[workload.id] = workload.users_demanded
    if asked:
        logger.info("users demanded", extra={"workloads": len(asked), "users": sum(asked.values())})
        send_outbox_soon(sv)
    return asked


def reclaim_stale_frames(sv: Supervisor, now: datetime | None = None) -> dict[str, int]:
    """Frames held too long by a user we have not heard from go back to be rendered; the
    user is counted as failing once per reclaim (and released past the limit)."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=sv.settings.stale_frame_seconds)
    reclaimed: dict[str, int] = {}
    for session, workload in _each_running_workload(sv):
        workload_id = workload.id
        silent = select(WorkloadUser.user_id).where(
            WorkloadUser.workload_id == workload_id, WorkloadUser.last_seen_at < cutoff
        )
        rows = session.execute(
            select(Frame.number, Frame.user_id).where(
                Frame.workload_id == workload_id,
                Frame.state == FrameState.ASSIGNED,
                Frame.assigned_at < cutoff,
                Frame.user_id.in_(silent),
            )
        ).all()
        if not rows:
            continue
        session.execute(
            update(Frame)
            .where(
                Frame.workload_id == workload_id,
                Frame.number.in_([row.number for row in rows]),
                Frame.state == FrameState.ASSIGNED,
            )
            .values(
                state=FrameState.PENDING,
                user_id=None,
                assigned_at=None,
                last_error="reclaimed: no news from the user",
            )
        )
        silent_users = sorted({row.user_id for row in rows})
        for user_id in silent_users:
            count_failure(session, workload, user_id, sv.settings.max_user_failures)
        distribute(session, workload, sv.settings.max_frames_per_assignment, skip=silent_users)
        reclaimed[workload_id] = len(rows)
    if reclaimed:
        logger.warning(
            "stale frames reclaimed",
            extra={"workloads": len(reclaimed), "frames": sum(reclaimed.values())},
        )
        send_outbox_soon(sv)
    return reclaimed


def rebalance(sv: Supervisor) -> dict[str, dict[str, int]]:
    """Give idle users work: pending frames first, else the unstarted tails of long queues."""
    moved: dict[str, dict[str, int]] = {}
    with sv.db.session() as session:
        idle_workloads = list(
            session.scalars(
                select(WorkloadUser.workload_id)
                .join(Workload, Workload.id == WorkloadUser.workload_id)
                .where(
                    Workload.status == WorkloadStatus.RUNNING,
                    WorkloadUser.state == UserState.ACTIVE,
                    ~select(Frame.number)
                    .where(
                        and_(
                            Frame.workload_id == WorkloadUser.workload_id,
                            Frame.user_id == WorkloadUser.user_id,
                            Frame.state == FrameState.ASSIGNED,
                        )
                    )
                    .exists(),
                )
                .distinct()
            )
        )
    for workload_id in idle_workloads:
        with sv.db.transaction() as session:
            workload = lock_workload(session, workload_id)
            if workload is None:
                continue
            granted = distribute(session, workload, sv.settings.max_frames_per_assignment)
            if granted:
                moved[workload_id] = granted
    if moved:
        send_outbox_soon(sv)
    return moved


def stuck_starts(sv: Supervisor, now: datetime | None = None) -> list[str]:
    """Workloads still `initialized` long after start: their preparation task was lost."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=sv.settings.stuck_start_seconds)
    with sv.db.session() as session:
        return list(
            session.scalars(
                select(Workload.id).where(
                    Workload.status == WorkloadStatus.INITIALIZED,
                    Workload.blend_file_path.is_not(None),
                    func.coalesce(Workload.updated_at, Workload.created_at) < cutoff,
                )
            )
        )
