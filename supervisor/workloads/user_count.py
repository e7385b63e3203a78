"""The Admin Panel's user-count controls: read the target, or set it and demand the missing
users or release the surplus."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from supervisor import timeline
from supervisor.errors import InvalidInput, NoActiveWorkload
from supervisor.keys import validate_id
from supervisor.models import (
    ACTIVE_STATUSES,
    Frame,
    FrameState,
    UserState,
    Workload,
    WorkloadStatus,
    WorkloadUser,
)
from supervisor.workloads.demand import active_user_ids, demand_missing_users, release_users
from supervisor.workloads.handoff import send_outbox_soon

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)


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


def get_user_count(sv: Services, customer_id: str) -> dict[str, Any]:
    with sv.db.session() as session:
        workload = _active_workload_for_admin(session, customer_id, lock=False)
        return {
            "user_count": workload.target_user_count,
            "session_id": workload.id,
            "active_users": len(active_user_ids(session, workload.id)),
        }


def set_user_count(sv: Services, customer_id: str, user_count: int) -> dict[str, Any]:
    """Demand the missing users, or release the surplus (those holding the fewest frames)."""
    maximum = sv.settings.max_user_count
    if not 1 <= user_count <= maximum:
        raise InvalidInput(f"user_count must be between 1 and {maximum}")
    with sv.db.transaction() as session:
        workload = _active_workload_for_admin(session, customer_id, lock=True)
        active = active_user_ids(session, workload.id)
        workload.target_user_count = user_count
        timeline.note(
            session,
            workload.id,
            timeline.Kind.USER_COUNT_SET,
            frames=None,
            detail=f"{user_count} users wanted",
        )
        running = workload.status == WorkloadStatus.RUNNING
        released: list[str] = []
        if running:
            released = _adjust_demand(session, workload, active, user_count)
        workload_id = workload.id
    logger.info(
        "user count set",
        extra={
            "workload_id": workload_id,
            "customer_id": customer_id,
            "user_count": user_count,
            "active_users": len(active),
            "released": len(released),
        },
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
