"""Periodic care of running workloads, run by beat: demand, stale frames, rebalancing.

Each function takes `now` so tests can move time forward; each workload is handled in its
own transaction under its row lock, like the event handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.orm import Session

from supervisor import outbox
from supervisor.events import distribute, lock_workload, unassign_user
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadStatus, WorkloadUser
from supervisor.workloads import demand_missing_users, send_outbox_soon

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
    """Ask again for the users a running workload lacks once the last ask is stale (the
    User Manager may have filled it in part and forgotten the rest, or restarted), and
    register again now and then even when nothing is missing: a User Manager that
    restarted routes nothing to a supervisor it does not know."""
    now = now or datetime.now(UTC)
    stale_before = now - timedelta(seconds=sv.settings.redemand_seconds)
    reregister_before = now - timedelta(seconds=sv.settings.reregister_seconds)
    asked: dict[str, int] = {}
    for session, workload in _each_running_workload(sv):
        stale = workload.demanded_at is None or workload.demanded_at < stale_before
        asked_before = workload.users_demanded
        missing = demand_missing_users(session, workload, force=stale)
        if missing and (stale or missing != asked_before):
            asked[workload.id] = missing
        elif workload.registered_at is None or workload.registered_at < reregister_before:
            outbox.register_with_user_manager(session, workload.id, workload.target_user_count)
            workload.registered_at = now
    if asked:
        logger.info("users demanded", extra={"workloads": len(asked), "users": sum(asked.values())})
    send_outbox_soon(sv)
    return asked


def reclaim_stale_frames(sv: Supervisor, now: datetime | None = None) -> dict[str, int]:
    """Users holding frames we have not heard from for a while are taken as lost: their
    frames go back to be rendered by others, the lost ones are released, and users are
    asked for again (after a fresh registration). "A while" is `stall_seconds`, or ten of
    the user's own frame times when that is longer; `stale_frame_seconds` for a user with
    no frame yet (its first frame may take long). A User Manager restart loses users this
    way: it forgets them and drops their events. Claims whose copy never finished are
    given up too."""
    now = now or datetime.now(UTC)
    settings = sv.settings
    reclaimed: dict[str, int] = {}
    for session, workload in _each_running_workload(sv):
        silent = _silent_holders(session, workload.id, now, settings)
        freed = sum(unassign_user(session, workload.id, user_id) for user_id in silent)
        if silent:
            session.execute(
                update(WorkloadUser)
                .where(
                    WorkloadUser.workload_id == workload.id,
                    WorkloadUser.user_id.in_(silent),
                    WorkloadUser.state == UserState.ACTIVE,
                )
                .values(state=UserState.RELEASED, left_at=func.now())
            )
        freed += _give_up_stale_claims(session, workload.id, now, settings.claim_timeout_seconds)
        if not silent and not freed:
            continue
        if silent:
            # A restarted User Manager forgets the nodes it had handed out and never offers
            # them again: released first, they join its idle pool, and the demand after
            # the release brings them (or others) back to us.
            outbox.to_users(session, workload.id, silent, "stop-work", lambda _user: {})
            outbox.to_user_manager(session, workload.id, "users-released", {"user_list": silent})
        distribute(session, workload, settings.max_frames_per_assignment)
        demand_missing_users(session, workload, force=True)
        reclaimed[workload.id] = freed
        logger.warning(
            "silent users dropped; their frames go to others",
            extra={"workload_id": workload.id, "users": silent, "frames": freed},
        )
    if reclaimed:
        send_outbox_soon(sv)
    return reclaimed


_SILENT_HOLDERS = text(
    "SELECT u.user_id FROM workload_users u "
    "WHERE u.workload_id = :workload_id AND u.state = 'active' "
    "AND u.last_seen_at < :now - make_interval(secs => CASE "
    " WHEN u.frames_done > 0 AND u.busy_seconds > 0 "
    " THEN GREATEST(:stall, 10 * u.busy_seconds / u.frames_done) ELSE :first_frame END) "
    "AND EXISTS (SELECT 1 FROM frames f WHERE f.workload_id = u.workload_id "
    " AND f.user_id = u.user_id AND f.state = 'assigned')"
)


def _silent_holders(session: Session, workload_id: str, now: datetime, settings: Any) -> list[str]:
    return sorted(
        session.scalars(
            _SILENT_HOLDERS,
            {
                "workload_id": workload_id,
                "now": now,
                "stall": settings.stall_seconds,
                "first_frame": max(settings.stall_seconds, settings.stale_frame_seconds),
            },
        )
    )


_GIVE_UP_STALE_CLAIMS = text(
    "UPDATE frames AS f SET "
    "state = CASE WHEN h.holder_active THEN 'assigned' ELSE 'pending' END, "
    "user_id = CASE WHEN h.holder_active THEN f.user_id END, "
    "claim_key = NULL, claimed_by = NULL, claimed_at = NULL, last_error = 'claim timed out' "
    "FROM (SELECT s.number, EXISTS (SELECT 1 FROM workload_users u "
    "  WHERE u.workload_id = s.workload_id AND u.user_id = s.user_id AND u.state = 'active') "
    "  AS holder_active FROM frames s WHERE s.workload_id = :workload_id "
    "  AND s.state = 'storing' AND s.claimed_at < :cutoff) AS h "
    "WHERE f.workload_id = :workload_id AND f.number = h.number AND f.state = 'storing'"
)


def _give_up_stale_claims(session: Session, workload_id: str, now: datetime, timeout: float) -> int:
    """A claim whose copy never finished (its worker died and the event was lost): the
    frame goes back to its holder if still active, else to be rendered again."""
    result = session.execute(
        _GIVE_UP_STALE_CLAIMS,
        {"workload_id": workload_id, "cutoff": now - timedelta(seconds=timeout)},
    )
    return result.rowcount or 0


def rebalance(sv: Supervisor) -> dict[str, dict[str, int]]:
    """Give idle users work: unassigned frames first, else the tails of long lists."""
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
            granted = distribute(
                session, workload, sv.settings.max_frames_per_assignment, steal=True
            )
            if granted:
                moved[workload_id] = granted
    if moved:
        send_outbox_soon(sv)
    return moved


def fully_recorded(sv: Supervisor) -> list[str]:
    """Running workloads whose every frame the catalog has confirmed."""
    with sv.db.session() as session:
        return list(
            session.scalars(
                select(Workload.id).where(
                    Workload.status == WorkloadStatus.RUNNING,
                    Workload.total_frames > 0,
                    Workload.recorded_frames >= Workload.total_frames,
                )
            )
        )


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
