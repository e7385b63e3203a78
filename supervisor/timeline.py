"""A workload's timeline: what happened to it, for the dashboard. Each event is written in
the transaction that made the change, so the timeline never shows what was rolled back."""

from __future__ import annotations

import enum

from sqlalchemy import insert
from sqlalchemy.orm import Session

from supervisor.models import WorkloadEvent

DETAIL_LENGTH = 300


class Kind(enum.StrEnum):
    STARTED = "started"
    USERS_ADDED = "users-added"
    USER_RELEASED = "user-released"
    USER_DISCONNECTED = "user-disconnected"
    USER_BANNED = "user-banned"
    FRAMES_REQUEUED = "frames-requeued"
    FRAME_REFUSED = "frame-refused"
    TAILS_MOVED = "tails-moved"
    FRAME_DUPLICATED = "frame-duplicated"
    FRAME_FLAGGED = "frame-flagged"
    USER_COUNT_SET = "user-count-set"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


def note(
    session: Session,
    workload_id: str,
    kind: Kind,
    *,
    user_id: str | None = None,
    frames: int | None = None,
    detail: str | None = None,
) -> None:
    session.execute(
        insert(WorkloadEvent).values(
            workload_id=workload_id,
            kind=kind.value,
            user_id=user_id,
            frames=frames,
            detail=detail[:DETAIL_LENGTH] if detail else None,
        )
    )


def note_users(
    session: Session, workload_id: str, kind: Kind, user_ids: list[str], frames: int | None = None
) -> None:
    """One event per user, in one statement."""
    if user_ids:
        session.execute(
            insert(WorkloadEvent),
            [
                {"workload_id": workload_id, "kind": kind.value, "user_id": user, "frames": frames}
                for user in user_ids
            ],
        )
