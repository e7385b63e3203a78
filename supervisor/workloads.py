"""Workload lifecycle: start, prepare, stop, status, and the admin user-count controls.

Every state change is a conditional statement (`... WHERE status = 'initialized'`), so a
call repeated after a crash or delivered twice does nothing the second time. Messages to
peers go through the outbox and leave only after the commit that decided them.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from supervisor import outbox
from supervisor.blendfile import read_scene_range
from supervisor.errors import (
    BlendFileError,
    InvalidInput,
    NoActiveWorkload,
    ObjectNotRenderable,
    PeerError,
    WorkloadAlreadyActive,
)
from supervisor.keys import validate_id
from supervisor.messaging import session_routing_key
from supervisor.models import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    Frame,
    FrameState,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)

if TYPE_CHECKING:
    from supervisor.service import Supervisor

logger = logging.getLogger(__name__)

ACTIVE_UNIQUE_INDEX = "uq_workloads_one_active_per_customer"
# The User Manager lists a session once per `new-session` and `cleanup-session` removes one
# entry; registrations are rare (see register_session), so this bound is never reached in
# practice, and only keeps a pathological workload from queueing without limit.
MAX_CLEANUPS = 50


def _log(event: str, workload_id: str | None, **fields: Any) -> None:
    logger.info(event, extra={"workload_id": workload_id, **fields})


def send_outbox_soon(sv: Supervisor) -> None:
    """Ask a worker to drain the outbox now. The messages are already committed, so if that
    request fails the periodic drain sends them a little later; the caller is not failed."""
    try:
        sv.jobs.drain_outbox()
    except Exception:
        logger.warning("could not dispatch an outbox drain; the periodic drain will", exc_info=True)


# --- start -----------------------------------------------------------------------------


def start_workload(sv: Supervisor, customer_id: str, object_id: str) -> str:
    """Create the workload row, resolve the object, and hand the slow part to the worker."""
    validate_id("customer_id", customer_id)
    validate_id("object_id", object_id)
    try:
        with sv.db.transaction() as session:
            workload = Workload(
                customer_id=customer_id,
                object_id=object_id,
                target_user_count=sv.settings.initial_user_count,
            )
            session.add(workload)
            session.flush()
            workload_id = workload.id
    except IntegrityError as exc:
        if ACTIVE_UNIQUE_INDEX in str(exc.orig):
            raise WorkloadAlreadyActive(customer_id) from None
        raise
    _log("workload created", workload_id, customer_id=customer_id, object_id=object_id)

    try:
        ref = sv.peers.catalog.get_blend_file(object_id, customer_id)
    except Exception as exc:
        fail_workload(sv, workload_id, f"catalog: {exc}")
        raise
    with sv.db.transaction() as session:
        session.execute(
            update(Workload)
            .where(Workload.id == workload_id, Workload.status == WorkloadStatus.INITIALIZED)
            .values(blend_file_path=ref.path, blend_file_hash=ref.hash)
        )
    try:
        sv.jobs.prepare_workload(workload_id)
    except Exception as exc:
        fail_workload(sv, workload_id, f"could not hand the workload to a worker: {exc}")
        raise
    return workload_id


@dataclass(frozen=True)
class _PrepareInput:
    customer_id: str
    object_id: str
    blend_file_path: str
    target_user_count: int
    frames_created: bool


def prepare_workload(sv: Supervisor, workload_id: str) -> None:
    """The worker's part of start: read the frame range, create the frames, register with
    the User Manager and demand users. Safe to run again after any failure."""
    with sv.db.transaction() as session:
        workload = session.get(Workload, workload_id)
        if workload is None or workload.status != WorkloadStatus.INITIALIZED:
            _log("prepare skipped: workload not waiting", workload_id)
            return
        if workload.blend_file_path is None:
            _log("prepare skipped: no blend file yet", workload_id)
            return
        job = _PrepareInput(
            customer_id=workload.customer_id,
            object_id=workload.object_id,
            blend_file_path=workload.blend_file_path,
            target_user_count=workload.target_user_count,
            frames_created=workload.total_frames > 0,
        )

    if not job.frames_created:
        try:
            _create_frames(sv, workload_id, job)
        except (BlendFileError, ObjectNotRenderable, InvalidInput) as exc:
            fail_workload(sv, workload_id, str(exc))
            return
        except PeerError as exc:
            if not exc.transient:
                fail_workload(sv, workload_id, str(exc))
                return
            raise

    sv.bindings.bind(workload_id)
    with sv.db.transaction() as session:
        workload = session.scalars(
            select(Workload)
            .where(Workload.id == workload_id, Workload.status == WorkloadStatus.INITIALIZED)
            .with_for_update()
        ).one_or_none()
        if workload is None:
            return
        workload.status = WorkloadStatus.RUNNING
        workload.started_at = func.now()
        workload.progress_at = func.now()
        demanded = demand_missing_users(session, workload, force=True, register=True)
    _log("workload running", workload_id, users_demanded=demanded)
    send_outbox_soon(sv)


def _create_frames(sv: Supervisor, workload_id: str, job: _PrepareInput) -> None:
    settings = sv.settings
    with tempfile.TemporaryDirectory(prefix="blend-") as folder:
        local = Path(folder) / "scene.blend"
        size = sv.peers.blob.download_blend(
            job.blend_file_path, local, max_bytes=settings.max_blend_bytes
        )
        scene = read_scene_range(
            local,
            timeout=settings.blend_parse_timeout_seconds,
            memory_limit=settings.blend_parse_memory_bytes,
        )
    frames = scene.frame_numbers()
    if len(frames) == 0:
        raise BlendFileError(f"scene {scene.name!r} has no frames to render")
    if len(frames) > settings.max_frames:
        raise BlendFileError(
            f"scene {scene.name!r} has {len(frames)} frames, more than the limit of "
            f"{settings.max_frames}"
        )
    with sv.db.transaction() as session:
        claimed = session.execute(
            update(Workload)
            .where(
                Workload.id == workload_id,
                Workload.status == WorkloadStatus.INITIALIZED,
                Workload.total_frames == 0,
            )
            .values(
                scene_name=scene.name,
                frame_start=scene.frame_start,
                frame_end=scene.frame_end,
                frame_step=scene.frame_step,
                total_frames=len(frames),
            )
            .returning(Workload.id)
        ).scalar_one_or_none()
        if claimed is None:
            return
        session.execute(
            text(
                "INSERT INTO frames (workload_id, number) "
                "SELECT :workload_id, n FROM generate_series("
                "CAST(:first AS integer), CAST(:last AS integer), CAST(:step AS integer)) AS n"
            ),
            {
                "workload_id": workload_id,
                "first": frames[0],
                "last": frames[-1],
                "step": frames.step,
            },
        )
    _log(
        "frames created",
        workload_id,
        scene=scene.name,
        frame_start=scene.frame_start,
        frame_end=scene.frame_end,
        frame_step=scene.frame_step,
        total_frames=len(frames),
        blend_bytes=size,
    )


# --- ending a workload ------------------------------------------------------------------


def _end(session: Session, workload: Workload, status: WorkloadStatus) -> list[str]:
    """End an active workload, in the order the real User Manager needs (CONTRACT.md §7):
    drop the demand first (a release re-serves a queued demand at once, to us), then
    `stop-work` and release every user (outbox.drain holds the release until the
    `stop-work`s are out), the catalog's `video-ready` on completion, and last the
    User Manager's `cleanup-session`. Late users are released again (end_late_users)."""
    was_running = workload.status == WorkloadStatus.RUNNING
    workload.status = status
    workload.finished_at = func.now()
    workload.users_demanded = 0
    if not was_running:
        return []
    _drop_demand(session, workload)
    released = release_users(session, workload.id, _active_user_ids(session, workload.id))
    if status == WorkloadStatus.COMPLETED:
        outbox.change_object_state(
            session,
            workload.id,
            object_id=workload.object_id,
            customer_id=workload.customer_id,
            state="video-ready",
        )
    for _ in range(min(max(1, workload.registrations), MAX_CLEANUPS)):
        outbox.cleanup_user_manager_session(session, workload.id)
    return released


def end_late_users(session: Session, workload: Workload, user_ids: list[str]) -> None:
    """Users handed to a workload that has ended go straight back. The User Manager may
    have dropped our registration already, and it ignores unregistered supervisors, so the
    release is wrapped in a registration and a clean-up."""
    outbox.register_with_user_manager(session, workload.id, 0)
    outbox.to_users(session, workload.id, user_ids, "stop-work", lambda _user: {})
    outbox.to_user_manager(session, workload.id, "users-released", {"user_list": user_ids})
    outbox.cleanup_user_manager_session(session, workload.id)


def complete_workloads(sv: Supervisor, workload_ids: list[str]) -> list[str]:
    """Complete the running workloads whose every frame the catalog has confirmed (called
    by the outbox drain after the last record, and by beat as a backstop)."""
    completed: list[str] = []
    for workload_id in workload_ids:
        with sv.db.transaction() as session:
            workload = session.scalars(
                select(Workload)
                .where(
                    Workload.id == workload_id,
                    Workload.status == WorkloadStatus.RUNNING,
                    Workload.recorded_frames >= Workload.total_frames,
                )
                .with_for_update()
            ).one_or_none()
            if workload is None:
                continue
            released = _end(session, workload, WorkloadStatus.COMPLETED)
            total = workload.total_frames
        completed.append(workload_id)
        _log("workload completed", workload_id, total_frames=total, users=len(released))
    if completed:
        send_outbox_soon(sv)
        for workload_id in completed:
            unbind_after_grace(sv, workload_id)
    return completed


def fail_workload(sv: Supervisor, workload_id: str, reason: str) -> bool:
    """Mark an active workload failed with its reason; release whatever it holds."""
    with sv.db.transaction() as session:
        workload = session.scalars(
            select(Workload)
            .where(Workload.id == workload_id, Workload.status.in_(ACTIVE_STATUSES))
            .with_for_update()
        ).one_or_none()
        if workload is None:
            return False
        workload.failure_reason = reason[:2000]
        _end(session, workload, WorkloadStatus.FAILED)
    logger.warning("workload failed", extra={"workload_id": workload_id, "reason": reason[:500]})
    send_outbox_soon(sv)
    unbind_after_grace(sv, workload_id)
    return True


def stop_and_delete(sv: Supervisor, customer_id: str) -> str:
    """stop-work to every user, drop the demand, release them, clean up the registration,
    forget the frames. The workload row stays as `stopped` for the unbind grace period:
    users the User Manager hands over late are released again, and the overview the
    Customer Service asks for right after a stop still answers."""
    validate_id("customer_id", customer_id)
    with sv.db.transaction() as session:
        workload = session.scalars(
            select(Workload)
            .where(Workload.customer_id == customer_id, Workload.status.in_(ACTIVE_STATUSES))
            .with_for_update()
        ).one_or_none()
        if workload is None:
            raise NoActiveWorkload(f"No active workload for customer_id: {customer_id}")
        workload_id = workload.id
        released = _end(session, workload, WorkloadStatus.STOPPED)
        session.execute(delete(Frame).where(Frame.workload_id == workload_id))
    _log("workload stopped and deleted", workload_id, customer_id=customer_id, users=len(released))
    send_outbox_soon(sv)
    unbind_after_grace(sv, workload_id)
    return workload_id


def unbind_after_grace(sv: Supervisor, workload_id: str) -> None:
    """A finished workload keeps its binding a while: events still in flight (a late
    duplicate, a last re-upload) are then consumed and their uploads cleaned up, instead
    of being dropped by the broker as unroutable and left in the temporary store."""
    try:
        sv.jobs.unbind_later(workload_id)
    except Exception:
        logger.warning(
            "could not schedule the unbinding of a finished session; unbinding now",
            extra={"workload_id": workload_id},
            exc_info=True,
        )
        unbind_quietly(sv, workload_id)


def end_grace(sv: Supervisor, workload_id: str) -> bool:
    """Once an ended workload's grace period is over: stop routing its session to us, and
    forget a stopped one for good. False while the grace period runs (or nothing to do)."""
    grace = timedelta(seconds=sv.settings.unbind_grace_seconds)
    with sv.db.session() as session:
        row = session.execute(
            select(Workload.status, Workload.finished_at, Workload.unbound_at).where(
                Workload.id == workload_id
            )
        ).one_or_none()
    if row is None or row.status not in ENDED_STATUSES or row.unbound_at is not None:
        return False
    if row.finished_at is not None and row.finished_at > datetime.now(UTC) - grace:
        return False
    sv.bindings.unbind(workload_id)
    with sv.db.transaction() as session:
        if row.status == WorkloadStatus.STOPPED:
            delete_workload(session, workload_id)
        else:
            session.execute(
                update(Workload).where(Workload.id == workload_id).values(unbound_at=func.now())
            )
    _log("session unbound after its grace period", workload_id, status=row.status)
    return True


def overdue_unbindings(sv: Supervisor, now: datetime | None = None) -> list[str]:
    """Ended workloads still bound after their grace period (their unbind task was lost)."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=sv.settings.unbind_grace_seconds)
    with sv.db.session() as session:
        return list(
            session.scalars(
                select(Workload.id)
                .where(
                    Workload.status.in_(ENDED_STATUSES),
                    Workload.unbound_at.is_(None),
                    Workload.finished_at < cutoff,
                )
                .limit(1000)
            )
        )


def unbind_quietly(sv: Supervisor, workload_id: str) -> None:
    """Stop routing the session's messages to us; a leftover binding only routes messages
    that are then refused as an unknown or finished session, so failure is logged only."""
    try:
        sv.bindings.unbind(workload_id)
    except Exception:
        logger.warning(
            "could not unbind a finished session", extra={"workload_id": workload_id}, exc_info=True
        )


def delete_workload(session: Session, workload_id: str) -> None:
    """Frames have no cascading foreign key (see Frame), so they go explicitly."""
    session.execute(delete(Frame).where(Frame.workload_id == workload_id))
    session.execute(delete(Workload).where(Workload.id == workload_id))


def demand_missing_users(
    session: Session, workload: Workload, *, force: bool = False, register: bool = False
) -> int:
    """Ask for the users the workload lacks, as `update-user-count` with the whole missing
    count (CONTRACT.md §7: the User Manager ignores `more-users` while a demand is queued,
    and forgets the rest of a demand it filled in part). Sent when the count changed, or
    when `force`d (after every `new-users` that leaves users missing; beat, when the last
    ask is stale). With `register`, a `new-session` goes first (see register)."""
    if workload.status != WorkloadStatus.RUNNING:
        return 0
    active = session.scalar(
        select(func.count())
        .select_from(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.state == UserState.ACTIVE)
    )
    missing = max(0, workload.target_user_count - (active or 0))
    if missing == 0:
        if workload.users_demanded:
            # update-user-count 0 would queue an empty demand, answered by an empty new-users.
            _drop_demand(session, workload)
            workload.users_demanded = 0
        return 0
    if missing != workload.users_demanded or force:
        if register:
            register_session(session, workload)
        outbox.to_user_manager(session, workload.id, "update-user-count", {"user_count": missing})
        workload.users_demanded = missing
        workload.demanded_at = func.now()
    return missing


def register_session(session: Session, workload: Workload, at: datetime | None = None) -> None:
    """Queue a `new-session`, before whatever is queued after it. Only when the User Manager
    may have forgotten us (at start, when a demand went unanswered, when the workload
    stalls): it lists the session once per call, and `cleanup-session` removes one entry,
    so each registration is counted and cleaned up at the end."""
    outbox.register_with_user_manager(session, workload.id, workload.target_user_count)
    workload.registrations += 1
    workload.registered_at = at or func.now()


def _drop_demand(session: Session, workload: Workload) -> None:
    outbox.to_user_manager(
        session,
        workload.id,
        "remove-users-demand-completely",
        {"session_supervisor_id": workload.id},
    )


# --- reading --------------------------------------------------------------------------

# Status is polled by every customer's UI, so each read is one statement in one round trip
# (Database.read_row), written for the driver: the ORM's session and row loading cost more
# than the query. The counters are O(1) columns of the workload row; nothing counts frames.
# A stopped workload is forgotten for status and progress (the contract's "deleted"); its
# row is kept only for late users and the overview during the grace period.
_LATEST = (
    "SELECT status, total_frames, rendered_frames, recorded_frames, failure_reason "
    "FROM workloads WHERE customer_id = %(customer_id)s AND status <> 'stopped' "
    "ORDER BY created_at DESC LIMIT 1"
)
# The mapping walks the partial index ix_frames_assigned_number (assigned frames only, by
# number), so its cost is the limit's, whatever the size of the workload or how far it got.
# Two arrays cost the database and the driver less than building and parsing a JSON object.
_PROGRESS = (
    "SELECT w.status, w.total_frames, w.rendered_frames, w.failure_reason, "
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


def workload_status(sv: Supervisor, customer_id: str) -> dict[str, Any]:
    """The customer's current workload, or the last one it finished, from O(1) counters.
    `completed_frames` counts frames stored; `recorded_frames` those the catalog confirmed.
    The workload is `completed` only once the catalog has every frame."""
    validate_id("customer_id", customer_id)
    row = sv.db.read_row(_LATEST, {"customer_id": customer_id})
    if row is None:
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


def _add_degradation(sv: Supervisor, body: dict[str, Any], status: str) -> None:
    """While a workload is active, name the peers it is waiting on (absent when healthy)."""
    if status in ACTIVE_STATUSES:
        degraded = sv.health.degraded()
        if degraded:
            body["degraded_peers"] = degraded


def workload_progress(sv: Supervisor, customer_id: str) -> dict[str, Any]:
    """Counters plus the frames still out with users, lowest first; the mapping holds at
    most `progress_mapping_limit` of them, so a huge workload answers as fast as a small
    one, and `frame_mapping_truncated` says when there are more."""
    validate_id("customer_id", customer_id)
    limit = sv.settings.progress_mapping_limit
    row = sv.db.read_row(_PROGRESS, {"customer_id": customer_id, "fetch": limit + 1})
    if row is None:
        raise _no_workload(customer_id)
    state, total, rendered, failure_reason, active_users, numbers, users = row
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


def session_overview(sv: Supervisor, customer_id: str) -> dict[str, Any] | None:
    """The customer's latest session, including one stopped moments ago (the Customer
    Service asks for its `session_id` right after a stop); None when it has none."""
    validate_id("customer_id", customer_id)
    with sv.db.session() as session:
        row = session.execute(
            text(
                _OVERVIEW_COLUMNS + "WHERE w.customer_id = :customer_id "
                "ORDER BY w.created_at DESC LIMIT 1"
            ),
            {"customer_id": customer_id},
        ).one_or_none()
    return _overview(row) if row is not None else None


def all_overviews(sv: Supervisor) -> list[dict[str, Any]]:
    """One overview per active workload (the Admin Panel's list)."""
    with sv.db.session() as session:
        rows = session.execute(
            text(
                _OVERVIEW_COLUMNS + "WHERE w.status IN ('initialized', 'running') "
                "ORDER BY w.created_at"
            )
        ).all()
    return [_overview(row) for row in rows]


# --- admin: user count ------------------------------------------------------------------


def _active_workload_for_admin(session: Session, customer_id: str, *, lock: bool) -> Workload:
    validate_id("customer_id", customer_id)
    query = select(Workload).where(
        Workload.customer_id == customer_id, Workload.status.in_(ACTIVE_STATUSES)
    )
    if lock:
        query = query.with_for_update()
    workload = session.scalars(query).one_or_none()
    if workload is None:
        raise NoActiveWorkload(f"No active session for customer_id: {customer_id}")
    return workload


def _active_user_ids(session: Session, workload_id: str) -> list[str]:
    return list(
        session.scalars(
            select(WorkloadUser.user_id)
            .where(
                WorkloadUser.workload_id == workload_id,
                WorkloadUser.state == UserState.ACTIVE,
            )
            .order_by(WorkloadUser.user_id)
        )
    )


def get_user_count(sv: Supervisor, customer_id: str) -> dict[str, Any]:
    with sv.db.session() as session:
        workload = _active_workload_for_admin(session, customer_id, lock=False)
        return {
            "user_count": workload.target_user_count,
            "session_id": workload.id,
            "active_users": len(_active_user_ids(session, workload.id)),
        }


def set_user_count(sv: Supervisor, customer_id: str, user_count: int) -> dict[str, Any]:
    """Demand the missing users, or release the surplus (those holding the fewest frames)."""
    maximum = sv.settings.max_user_count
    if not 1 <= user_count <= maximum:
        raise InvalidInput(f"user_count must be between 1 and {maximum}")
    with sv.db.transaction() as session:
        workload = _active_workload_for_admin(session, customer_id, lock=True)
        active = _active_user_ids(session, workload.id)
        workload.target_user_count = user_count
        running = workload.status == WorkloadStatus.RUNNING
        released: list[str] = []
        if running:
            released = _adjust_demand(session, workload, active, user_count)
        workload_id = workload.id
    _log(
        "user count set",
        workload_id,
        customer_id=customer_id,
        user_count=user_count,
        active_users=len(active),
        released=len(released),
    )
    send_outbox_soon(sv)
    return {"message": "User count updated successfully", "new_user_count": user_count}


def _adjust_demand(
    session: Session, workload: Workload, active: list[str], target: int
) -> list[str]:
    demand_missing_users(session, workload)
    surplus = len(active) - target
    if surplus <= 0:
        return []
    return release_users(session, workload.id, _lightest_users(session, workload.id, surplus))


def _lightest_users(session: Session, workload_id: str, count: int) -> list[str]:
    held = (
        select(func.count())
        .select_from(Frame)
        .where(
            Frame.workload_id == workload_id,
            Frame.user_id == WorkloadUser.user_id,
            Frame.state == FrameState.ASSIGNED,
        )
        .correlate(WorkloadUser)
        .scalar_subquery()
    )
    return list(
        session.scalars(
            select(WorkloadUser.user_id)
            .where(
                WorkloadUser.workload_id == workload_id,
                WorkloadUser.state == UserState.ACTIVE,
            )
            .order_by(held, WorkloadUser.user_id)
            .limit(count)
        )
    )


def release_users(session: Session, workload_id: str, user_ids: list[str]) -> list[str]:
    """Give users back to the pool: their unfinished frames return to pending."""
    if not user_ids:
        return []
    session.execute(
        update(Frame)
        .where(
            Frame.workload_id == workload_id,
            Frame.user_id.in_(user_ids),
            Frame.state == FrameState.ASSIGNED,
        )
        .values(state=FrameState.PENDING, user_id=None, assigned_at=None)
    )
    session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload_id, WorkloadUser.user_id.in_(user_ids))
        .values(state=UserState.RELEASED, left_at=func.now())
    )
    outbox.to_users(session, workload_id, user_ids, "stop-work", lambda _user: {})
    outbox.to_user_manager(session, workload_id, "users-released", {"user_list": user_ids})
    return user_ids
