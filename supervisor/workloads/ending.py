"""Ending a workload (completed, failed, stopped) and, after its grace period, forgetting
its binding and, for a stopped one, its row. Every ending is a conditional statement on an
active workload, so a repeated call does nothing the second time."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from supervisor import outbox, timeline
from supervisor.errors import NoActiveWorkload
from supervisor.keys import validate_id
from supervisor.models import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    Frame,
    OutboxMessage,
    Workload,
    WorkloadStatus,
)
from supervisor.workloads.demand import active_user_ids, drop_demand, release_users
from supervisor.workloads.handoff import send_outbox_soon, unbind_after_grace

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)

# The User Manager lists a session once per `new-session` and `cleanup-session` removes one
# entry; registrations are rare (see register_session), so this bound is never reached in
# practice, and only keeps a pathological workload from queueing without limit.
MAX_CLEANUPS = 50


def _end(session: Session, workload: Workload, status: WorkloadStatus) -> list[str]:
    """End an active workload, in the order the real User Manager needs (CONTRACT.md §7):
    drop the demand first (a release re-serves a queued demand at once, to us), then
    `stop-work` and release every user (outbox.drain holds the release until the
    `stop-work`s are out), the catalog's `video-ready` on completion, and last the
    User Manager's `cleanup-session`. Late users are released again (end_late_users)."""
    was_running = workload.status == WorkloadStatus.RUNNING
    workload.status = status
    timeline.note(session, workload.id, timeline.Kind(status.value), detail=workload.failure_reason)
    workload.finished_at = func.now()
    workload.users_demanded = 0
    if not was_running:
        return []
    drop_demand(session, workload)
    released = release_users(session, workload.id, active_user_ids(session, workload.id))
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
    """Users handed to a workload that has ended go straight back."""
    outbox.to_users(session, workload.id, user_ids, "stop-work", lambda _user: {})
    release_with_registration(session, workload.id, user_ids)


def release_with_registration(session: Session, session_id: str, user_ids: list[str]) -> None:
    """Release users to a User Manager that may have dropped our registration already: it
    ignores unregistered supervisors, so the release is wrapped in a registration and a
    clean-up."""
    outbox.register_with_user_manager(session, session_id, 0)
    outbox.to_user_manager(session, session_id, "users-released", {"user_list": user_ids})
    outbox.cleanup_user_manager_session(session, session_id)


def complete_workloads(sv: Services, workload_ids: list[str]) -> list[str]:
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
        logger.info(
            "workload completed",
            extra={"workload_id": workload_id, "total_frames": total, "users": len(released)},
        )
    if completed:
        send_outbox_soon(sv)
        for workload_id in completed:
            unbind_after_grace(sv, workload_id)
    return completed


def fail_workload(sv: Services, workload_id: str, reason: str, *, bound: bool = True) -> bool:
    """Mark an active workload failed with its reason; release whatever it holds.

    `bound=False` is the caller's word that the workload was never bound to its session nor
    registered with the User Manager (its preparation was never handed out). A workload
    still `initialized` queues nothing when it ends (see _end), so it is then marked
    unbound at once and no drain or unbinding is scheduled for it."""
    with sv.db.transaction() as session:
        workload = session.scalars(
            select(Workload)
            .where(Workload.id == workload_id, Workload.status.in_(ACTIVE_STATUSES))
            .with_for_update()
        ).one_or_none()
        if workload is None:
            return False
        nothing_to_undo = not bound and workload.status == WorkloadStatus.INITIALIZED
        workload.failure_reason = reason[:2000]
        _end(session, workload, WorkloadStatus.FAILED)
        if nothing_to_undo:
            workload.unbound_at = func.now()
    logger.warning("workload failed", extra={"workload_id": workload_id, "reason": reason[:500]})
    if not nothing_to_undo:
        send_outbox_soon(sv)
        unbind_after_grace(sv, workload_id)
    return True


def stop_and_delete(sv: Services, customer_id: str) -> str:
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
    logger.info(
        "workload stopped and deleted",
        extra={"workload_id": workload_id, "customer_id": customer_id, "users": len(released)},
    )
    send_outbox_soon(sv)
    unbind_after_grace(sv, workload_id)
    return workload_id


def end_grace(sv: Services, workload_id: str) -> bool:
    """Once an ended workload's grace period is over: stop routing its session to us, and
    forget a stopped one for good. False while the grace period runs (or nothing to do).

    The period runs from the ending or, if later, from the last `cleanup-session` sent, and
    not while a User Manager message of the workload is still queued: the User Manager hands
    users over after reading what we sent, however late the outbox sent it. The unbind task
    comes at the end of the first count; beat's backstop (overdue_unbindings) after that.

    The unbinding happens under the row's lock: a prepare that bound the session meanwhile
    waits for it, then finds the row gone or unbound and unbinds again (prepare_workload)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=sv.settings.unbind_grace_seconds)
    with sv.db.transaction() as session:
        row = session.execute(
            select(Workload.status, Workload.unbound_at, _quiet_since())
            .where(Workload.id == workload_id)
            .with_for_update()
        ).one_or_none()
        if row is None or row.status not in ENDED_STATUSES or row.unbound_at is not None:
            return False
        if row.quiet_since is not None and row.quiet_since > cutoff:
            return False
        if session.scalar(select(_user_manager_pending(workload_id))):
            return False
        sv.bindings.unbind(workload_id)
        if row.status == WorkloadStatus.STOPPED:
            delete_workload(session, workload_id)
        else:
            session.execute(
                update(Workload).where(Workload.id == workload_id).values(unbound_at=func.now())
            )
    logger.info(
        "session unbound after its grace period",
        extra={"workload_id": workload_id, "status": row.status},
    )
    return True


def _quiet_since() -> ColumnElement[datetime | None]:
    """When an ended workload last spoke to the User Manager (GREATEST skips a NULL)."""
    return func.greatest(Workload.finished_at, Workload.cleanup_sent_at).label("quiet_since")


def _user_manager_pending(workload_id: ColumnElement[str] | str) -> ColumnElement[bool]:
    """Whether a User Manager message of the workload is still in the outbox."""
    return exists().where(
        OutboxMessage.workload_id == workload_id,
        OutboxMessage.destination == outbox.USER_MANAGER,
    )


def overdue_unbindings(sv: Services, now: datetime | None = None) -> list[str]:
    """Ended workloads still bound after their grace period (their unbind task was lost,
    or came while the outbox still held their messages)."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=sv.settings.unbind_grace_seconds)
    with sv.db.session() as session:
        return list(
            session.scalars(
                select(Workload.id)
                .where(
                    Workload.status.in_(ENDED_STATUSES),
                    Workload.unbound_at.is_(None),
                    Workload.finished_at < cutoff,
                    or_(Workload.cleanup_sent_at.is_(None), Workload.cleanup_sent_at < cutoff),
                    ~_user_manager_pending(Workload.id),
                )
                .limit(1000)
            )
        )


def delete_workload(session: Session, workload_id: str) -> None:
    """Frames have no cascading foreign key (see Frame), so they go explicitly."""
    session.execute(delete(Frame).where(Frame.workload_id == workload_id))
    session.execute(delete(Workload).where(Workload.id == workload_id))
