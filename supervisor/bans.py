"""The ban policy: a user that fails too many frames of a workload is released and banned
from it; a banned user handed to it again is taken back only once forgiven
(`forgive_user_seconds` after it was banned)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, update
from sqlalchemy.orm import Session

from supervisor import timeline
from supervisor.models import UserState, Workload, WorkloadUser
from supervisor.workloads import release_users

logger = logging.getLogger(__name__)


def count_failure(session: Session, workload: Workload, user_id: str, limit: int) -> bool:
    """Count a failed frame against the user; past the limit it is released and banned."""
    failures = session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.user_id == user_id)
        .values(failed_frames=WorkloadUser.failed_frames + 1)
        .returning(WorkloadUser.failed_frames, WorkloadUser.state)
    ).one_or_none()
    if failures is None or failures.state != UserState.ACTIVE or failures.failed_frames <= limit:
        return False
    release_users(session, workload.id, [user_id])
    session.execute(
        update(WorkloadUser)
        .where(WorkloadUser.workload_id == workload.id, WorkloadUser.user_id == user_id)
        .values(state=UserState.BANNED, left_at=func.now())
    )
    timeline.note(
        session,
        workload.id,
        timeline.Kind.USER_BANNED,
        user_id=user_id,
        detail=f"{failures[0]} failed frames",
    )
    logger.warning(
        "user failed too many frames; released and banned from this workload",
        extra={"workload_id": workload.id, "user_id": user_id, "failures": failures[0]},
    )
    return True


def may_return(user: Any, forgiven_before: datetime) -> ColumnElement[bool]:
    """Whether a user row (`user`: the table's columns) that left may be made active again:
    a released or disconnected user always, a banned one once it was banned before
    `forgiven_before`."""
    return or_(
        user.state.in_([UserState.RELEASED, UserState.DISCONNECTED]),
        and_(user.state == UserState.BANNED, user.left_at < forgiven_before),
    )
