"""What a running workload asks of the User Manager: the users it lacks, its registration,
and the users it gives back. Each function queues outbox rows in the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from supervisor import outbox, timeline
from supervisor.models import Frame, FrameState, UserState, Workload, WorkloadStatus, WorkloadUser


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
            drop_demand(session, workload)
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


def drop_demand(session: Session, workload: Workload) -> None:
    outbox.to_user_manager(
        session,
        workload.id,
        "remove-users-demand-completely",
        {"session_supervisor_id": workload.id},
    )


def active_user_ids(session: Session, workload_id: str) -> list[str]:
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


def release_users(session: Session, workload_id: str, user_ids: list[str]) -> list[str]:
    """Give users back to the pool: their unfinished frames return to pending."""
    if not user_ids:
        return []
    held = (
        Frame.workload_id == workload_id,
        Frame.user_id.in_(user_ids),
        Frame.state == FrameState.ASSIGNED,
    )
    returned: dict[str, int] = {
        user_id: count
        for user_id, count in session.execute(
            select(Frame.user_id, func.count()).where(*held).group_by(Frame.user_id)
        )
    }
    session.execute(
        update(Frame).where(*held).values(state=FrameState.PENDING, user_id=None, assigned_at=None)
    )
    session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload_id, WorkloadUser.user_id.in_(user_ids))
        .values(state=UserState.RELEASED, left_at=func.now())
    )
    for user_id in user_ids:
        timeline.note(
            session,
            workload_id,
            timeline.Kind.USER_RELEASED,
            user_id=user_id,
            frames=returned.get(user_id),
        )
    outbox.to_users(session, workload_id, user_ids, "stop-work", lambda _user: {})
    outbox.to_user_manager(session, workload_id, "users-released", {"user_list": user_ids})
    return user_ids
