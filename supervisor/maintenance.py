"""Periodic care of workloads, run by beat: demand, stale frames, rebalancing for running
ones, and removing ended ones once their retention is over.

Each function takes `now` so tests can move time forward; each workload is handled in its
own transaction under its row lock, like the event handlers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, delete, exists, func, select, text, update
from sqlalchemy.orm import Session

from supervisor import outbox, timeline
from supervisor.frames import speculation
from supervisor.frames.assignment import distribute, lock_workload, unassign_user
from supervisor.models import (
    ENDED_STATUSES,
    Frame,
    FrameState,
    InboxEvent,
    OutboxMessage,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.workloads import demand_missing_users, register_session, send_outbox_soon

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)


def _running_ids(sv: Services) -> list[str]:
    with sv.db.session() as session:
        return list(
            session.scalars(select(Workload.id).where(Workload.status == WorkloadStatus.RUNNING))
        )


def _each_running_workload(sv: Services) -> Iterator[tuple[Session, Workload]]:
    """Each running workload in its own transaction, under its row lock."""
    for workload_id in _running_ids(sv):
        with sv.db.transaction() as session:
            workload = lock_workload(session, workload_id)
            if workload is not None and workload.status == WorkloadStatus.RUNNING:
                yield session, workload


def demand_users(sv: Services, now: datetime | None = None) -> dict[str, int]:
    """Ask again for the users a running workload lacks once the last ask is stale, after a
    fresh registration (the User Manager may have restarted and forgotten us; it drops the
    demands of supervisors it does not know). A workload that has made no progress for
    `stall_seconds` registers again too, missing users or not: a restarted User Manager
    routes nothing to a supervisor it does not know."""
    now = now or datetime.now(UTC)
    stale_before = now - timedelta(seconds=sv.settings.redemand_seconds)
    stalled_before = now - timedelta(seconds=sv.settings.stall_seconds)
    asked: dict[str, int] = {}
    for session, workload in _each_running_workload(sv):
        stale = workload.demanded_at is None or workload.demanded_at < stale_before
        asked_before = workload.users_demanded
        missing = demand_missing_users(session, workload, force=stale, register=stale)
        if missing and (stale or missing != asked_before):
            asked[workload.id] = missing
        elif _older(workload.progress_at, stalled_before) and _older(
            workload.registered_at, now - _stall_backoff(sv, workload)
        ):
            register_session(session, workload, at=now)
            logger.warning(
                "no progress for a while; registered again", extra={"workload_id": workload.id}
            )
    if asked:
        logger.info("users demanded", extra={"workloads": len(asked), "users": sum(asked.values())})
    send_outbox_soon(sv)
    return asked


def _stall_backoff(sv: Services, workload: Workload) -> timedelta:
    """How long a stalled workload waits before registering again: `stall_seconds`, doubled
    for each registration it already made, up to 32 times, so a User Manager down for hours
    does not collect hundreds of entries (each needs its cleanup-session)."""
    doublings = min(max(workload.registrations - 1, 0), 5)
    return timedelta(seconds=sv.settings.stall_seconds * 2**doublings)


def _older(moment: datetime | None, cutoff: datetime) -> bool:
    return moment is None or moment < cutoff


def reclaim_stale_frames(sv: Services, now: datetime | None = None) -> dict[str, int]:
    """Users holding frames we have not heard from for a while are taken as lost: their
    frames go back to be rendered by others, and users are asked for again (after a fresh
    registration). "A while" is `stall_seconds`, or ten of the user's own frame times when
    that is longer; `stale_frame_seconds` for a user with no frame yet (its first frame may
    take long). A User Manager restart loses users this way: it forgets them and drops
    their events, and never offers them again. So a lost user the User Service can still
    reach is released (before the demand, which then brings it back to us); one it cannot
    reach (a node gone, or back under a new id) is dropped without a release, which would
    hand a dead id to the next session. Claims whose copy never finished are given up."""
    now = now or datetime.now(UTC)
    settings = sv.settings
    suspects = _silent_holders(sv, now)
    probed = _probe(sv, suspects)
    reclaimed: dict[str, int] = {}
    for session, workload in _each_running_workload(sv):
        # A user whose node we could not ask about (the User Service is down) is left be.
        silent = sorted(
            user
            for user in _still_silent(session, workload.id, now, settings)
            if probed.get((workload.id, user)) is not None
        )
        freed = 0
        for user_id in silent:
            held = unassign_user(session, workload.id, user_id)
            freed += held
            timeline.note(
                session,
                workload.id,
                timeline.Kind.FRAMES_REQUEUED,
                user_id=user_id,
                frames=held,
                detail="not heard from",
            )
        release = [user for user in silent if probed[(workload.id, user)]]
        gone = [user for user in silent if not probed[(workload.id, user)]]
        for users, state in ((release, UserState.RELEASED), (gone, UserState.DISCONNECTED)):
            if users:
                session.execute(
                    update(WorkloadUser)
                    .where(
                        WorkloadUser.workload_id == workload.id,
                        WorkloadUser.user_id.in_(users),
                        WorkloadUser.state == UserState.ACTIVE,
                    )
                    .values(state=state, left_at=func.now())
                )
        freed += _give_up_stale_claims(session, workload.id, now, settings.claim_timeout_seconds)
        if not silent and not freed:
            continue
        if release:
            outbox.to_users(session, workload.id, release, "stop-work", lambda _user: {})
            outbox.to_user_manager(session, workload.id, "users-released", {"user_list": release})
        distribute(session, workload, settings.max_frames_per_assignment)
        demand_missing_users(session, workload, force=True, register=True)
        reclaimed[workload.id] = freed
        logger.warning(
            "silent users dropped; their frames go to others",
            extra={"workload_id": workload.id, "released": release, "gone": gone, "frames": freed},
        )
    if reclaimed:
        send_outbox_soon(sv)
    return reclaimed


# Silent holders: active users holding frames, unheard of for `stall_seconds` or ten of
# their own frame times (`first_frame` while they have none) since they last sent an upload
# or were last sent a list, with a frame each holds. A user a message is still waiting
# for (the User Service is failing) is not silent: we are.
_SILENT_HOLDERS = text(
    "SELECT u.workload_id, u.user_id, w.blend_file_hash, held.number FROM workload_users u "
    "JOIN workloads w ON w.id = u.workload_id AND w.status = 'running' "
    "CROSS JOIN LATERAL (SELECT min(f.number) AS number FROM frames f "
    " WHERE f.workload_id = u.workload_id AND f.user_id = u.user_id AND f.state = 'assigned') "
    "AS held WHERE held.number IS NOT NULL AND u.state = 'active' "
    "AND (CAST(:workload_id AS varchar) IS NULL OR u.workload_id = :workload_id) "
    "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.workload_id = u.workload_id "
    " AND o.destination = 'user-service' AND o.body->>'user_id' = u.user_id) "
    "AND GREATEST(u.last_seen_at, u.clock_at) < :now - make_interval(secs => CASE "
    " WHEN u.frames_done > 0 AND u.busy_seconds > 0 "
    " THEN GREATEST(:stall, 10 * u.busy_seconds / u.frames_done) ELSE :first_frame END)"
)


def _silence_params(now: datetime, settings: Any) -> dict[str, Any]:
    return {
        "now": now,
        "stall": settings.stall_seconds,
        "first_frame": max(settings.stall_seconds, settings.stale_frame_seconds),
    }


def _silent_holders(sv: Services, now: datetime) -> dict[str, dict[str, tuple[int, str]]]:
    """Silent users holding frames, by workload: a frame each holds, and the blend hash."""
    with sv.db.session() as session:
        params = {"workload_id": None, **_silence_params(now, sv.settings)}
        rows = session.execute(_SILENT_HOLDERS, params).all()
    suspects: dict[str, dict[str, tuple[int, str]]] = {}
    for row in rows:
        suspects.setdefault(row.workload_id, {})[row.user_id] = (row.number, row.blend_file_hash)
    return suspects


def _still_silent(session: Session, workload_id: str, now: datetime, settings: Any) -> set[str]:
    """Checked again under the workload's lock: a user heard from meanwhile is kept."""
    params = {"workload_id": workload_id, **_silence_params(now, settings)}
    return {row.user_id for row in session.execute(_SILENT_HOLDERS, params)}


def _probe(
    sv: Services, suspects: dict[str, dict[str, tuple[int, str]]]
) -> dict[tuple[str, str], bool | None]:
    """Ask each suspect's node for a frame it holds (`retrieve-frame`, acknowledged),
    outside any transaction, a few at a time: True when it answered, False when the User
    Service could not reach it, None when the User Service itself could not be reached."""
    pairs = [
        (workload_id, user, frame, blend_hash or "")
        for workload_id, users in suspects.items()
        for user, (frame, blend_hash) in users.items()
    ]
    if not pairs:
        return {}

    def answers(pair: tuple[str, str, int, str]) -> bool | None:
        _workload_id, user, frame, blend_hash = pair
        data = {"frame-number": frame, "blend-file-hash": blend_hash}
        return sv.peers.users.answers(user, "retrieve-frame", data)

    with ThreadPoolExecutor(max_workers=min(8, len(pairs)), thread_name_prefix="probe") as pool:
        answered = list(pool.map(answers, pairs))
    return {(w, u): ok for (w, u, _f, _h), ok in zip(pairs, answered, strict=True)}


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


def rebalance(sv: Services) -> dict[str, dict[str, int]]:
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
                session,
                workload,
                sv.settings.max_frames_per_assignment,
                steal=True,
                speculate=speculation.Policy.from_settings(sv.settings),
            )
            if granted:
                moved[workload_id] = granted
    if moved:
        send_outbox_soon(sv)
    return moved


def fully_recorded(sv: Services) -> list[str]:
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


def stuck_starts(sv: Services, now: datetime | None = None) -> list[str]:
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


# One batch of the retention sweep: at most REMOVAL_BATCH workloads, and of them only as
# many as it takes for their frames to reach REMOVAL_FRAME_BUDGET (one at least), so neither
# a backlog of small workloads nor a few huge ones make one long transaction. One of
# 2,000,000 frames (MAX_FRAMES) took 3 s alone, well inside the 30 s statement timeout.
REMOVAL_BATCH = 500
REMOVAL_FRAME_BUDGET = 200_000
REMOVAL_TIME_BUDGET_SECONDS = 60.0


def remove_old_workloads(
    sv: Services,
    now: datetime | None = None,
    *,
    batch_size: int = REMOVAL_BATCH,
    frame_budget: int = REMOVAL_FRAME_BUDGET,
    time_budget_seconds: float = REMOVAL_TIME_BUDGET_SECONDS,
) -> int:
    """Delete ended workloads that finished more than `workload_retention_seconds` ago, with
    their frames (and, by their foreign key, their users), oldest first, one batch per
    transaction until none is left or the time budget is spent (one batch at least, so a
    run always makes progress); one log line per batch.

    Only a workload whose session is unbound is taken: one still in its grace period, or
    whose unbinding is overdue (finish_workloads retries it), keeps its row. So does one
    with messages still to send or events still to handle: the outbox retries until the
    peer takes them, and the row goes on a later run. Returns how many were deleted."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=sv.settings.workload_retention_seconds)
    deadline = time.monotonic() + time_budget_seconds
    removed = 0
    while True:
        with sv.db.transaction() as session:
            batch = _old_ended_batch(session, cutoff, batch_size, frame_budget)
            if not batch:
                break
            frames = session.execute(delete(Frame).where(Frame.workload_id.in_(batch))).rowcount
            session.execute(delete(Workload).where(Workload.id.in_(batch)))
        removed += len(batch)
        logger.info(
            "ended workloads removed",
            extra={"workloads": len(batch), "frames": frames or 0, "removed_so_far": removed},
        )
        if time.monotonic() >= deadline:
            break
    return removed


# Written into the statement, not bound, so the planner always matches it to the predicate
# of the partial index ix_workloads_ended_finished_at, whatever plan it caches.
_ENDED = bindparam(
    "ended", [status.value for status in ENDED_STATUSES], expanding=True, literal_execute=True
)


def _old_ended_batch(
    session: Session, cutoff: datetime, batch_size: int, frame_budget: int
) -> list[str]:
    """The next batch's ids, locked; rows another sweep holds are skipped."""
    candidates = (
        select(Workload.id, Workload.finished_at, Workload.total_frames)
        .where(
            Workload.status.in_(_ENDED),
            Workload.finished_at < cutoff,
            Workload.unbound_at.is_not(None),
            ~exists().where(OutboxMessage.workload_id == Workload.id),
            ~exists().where(InboxEvent.workload_id == Workload.id),
        )
        .order_by(Workload.finished_at, Workload.id)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
        .cte("candidates")
    )
    frames_before = (
        func.sum(candidates.c.total_frames).over(
            order_by=(candidates.c.finished_at, candidates.c.id)
        )
        - candidates.c.total_frames
    )
    budgeted = select(candidates.c.id, frames_before.label("frames_before")).subquery()
    return list(
        session.scalars(select(budgeted.c.id).where(budgeted.c.frames_before < frame_budget))
    )
