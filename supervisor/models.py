"""The tables. Postgres is the source of truth; every state change is one conditional statement."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 128


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WorkloadStatus(enum.StrEnum):
    INITIALIZED = "initialized"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


ACTIVE_STATUSES = (WorkloadStatus.INITIALIZED, WorkloadStatus.RUNNING)
ENDED_STATUSES = (WorkloadStatus.COMPLETED, WorkloadStatus.FAILED, WorkloadStatus.STOPPED)


class FrameState(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    STORING = "storing"
    RENDERED = "rendered"


class UserState(enum.StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    DISCONNECTED = "disconnected"
    BANNED = "banned"


def _check_in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def _new_session_id() -> str:
    return uuid.uuid4().hex


class Workload(Base):
    """One customer render job; its id is the session id the User Manager knows us by."""

    __tablename__ = "workloads"
    __table_args__ = (
        CheckConstraint(_check_in("status", WorkloadStatus), name="status"),
        CheckConstraint(
            "rendered_frames >= 0 AND rendered_frames <= total_frames "
            "AND recorded_frames >= 0 AND recorded_frames <= rendered_frames",
            name="counts",
        ),
        Index(
            "uq_workloads_one_active_per_customer",
            "customer_id",
            unique=True,
            postgresql_where=text("status IN ('initialized', 'running')"),
        ),
        Index("ix_workloads_customer_created", "customer_id", "created_at"),
        # Ended workloads by age: beat's retention sweep and its unbinding backstop.
        Index(
            "ix_workloads_ended_finished_at",
            "finished_at",
            postgresql_where=text("status IN ('completed', 'failed', 'stopped')"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_session_id)
    customer_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    object_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default=WorkloadStatus.INITIALIZED.value)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    blend_file_path: Mapped[str | None] = mapped_column(Text)
    blend_file_hash: Mapped[str | None] = mapped_column(Text)
    scene_name: Mapped[str | None] = mapped_column(Text)
    frame_start: Mapped[int | None] = mapped_column(Integer)
    frame_end: Mapped[int | None] = mapped_column(Integer)
    frame_step: Mapped[int | None] = mapped_column(Integer)
    total_frames: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rendered_frames: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    recorded_frames: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    speculative_renders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What the .blend's active scene writes; every upload is checked against it.
    output_width: Mapped[int | None] = mapped_column(Integer)
    output_height: Mapped[int | None] = mapped_column(Integer)
    output_format: Mapped[str | None] = mapped_column(String(32))
    target_user_count: Mapped[int] = mapped_column(Integer)
    users_demanded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    demanded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    registered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    registrations: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    unbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the User Manager last got this workload's `cleanup-session` (the outbox drain
    # sets it): an ended workload's grace period runs from then if it is later than
    # `finished_at`, since users the User Manager hands over come after what we sent.
    cleanup_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def session_id(self) -> str:
        return self.id


class WorkloadUser(Base):
    """A render node handed to a workload, and how it has behaved there."""

    __tablename__ = "workload_users"
    __table_args__ = (CheckConstraint(_check_in("state", UserState), name="state"),)

    workload_id: Mapped[str] = mapped_column(
        ForeignKey("workloads.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=UserState.ACTIVE.value)
    failed_frames: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    left_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    frames_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    clock_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The ETA's view of this user (supervisor/eta.py): a robust running frame time, its
    # spread and how many frame times made them, and the running time from a list's start to
    # its first upload. `clock_from_list`: the clock started with a new list, so the next
    # upload's time includes start-up: it goes to list_start_seconds, not to the pace.
    pace_seconds: Mapped[float | None] = mapped_column(Float)
    pace_spread: Mapped[float | None] = mapped_column(Float)
    pace_samples: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    list_start_seconds: Mapped[float | None] = mapped_column(Float)
    clock_from_list: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")


class Frame(Base):
    """One frame of a workload. Created set-based (generate_series), never in a Python loop.

    No foreign key to workloads on purpose: its per-row check tripled the time of creating a
    1,000,000-frame workload (5.0 s against 1.6 s). Frames are inserted only by that one
    statement, under a lock on their workload row, and deleted with it (delete_workload)."""

    __tablename__ = "frames"
    __table_args__ = (
        CheckConstraint(_check_in("state", FrameState), name="state"),
        Index(
            "ix_frames_assigned_user",
            "workload_id",
            "user_id",
            "number",
            postgresql_where=text("state = 'assigned'"),
        ),
        Index(
            "ix_frames_assigned_number",
            "workload_id",
            "number",
            postgresql_where=text("state = 'assigned'"),
        ),
        Index(
            "ix_frames_storing_claimed_at",
            "claimed_at",
            postgresql_where=text("state = 'storing'"),
        ),
        # Refused or failed frames waiting to be rendered again: the dashboard's grid.
        Index(
            "ix_frames_failed_waiting",
            "workload_id",
            "number",
            postgresql_where=text("state = 'pending' AND last_error IS NOT NULL"),
        ),
        # Frames a second user renders speculatively while they are still held.
        Index(
            "ix_frames_backup_held",
            "workload_id",
            "backup_user_id",
            postgresql_where=text("backup_user_id IS NOT NULL AND state = 'assigned'"),
        ),
    )

    workload_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(
        String(16), default=FrameState.PENDING.value, server_default=FrameState.PENDING.value
    )
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    final_key: Mapped[str | None] = mapped_column(Text)
    claim_key: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    assigned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rendered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A second holder rendering the frame speculatively (frames.speculation); at most one.
    backup_user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    backup_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sha256: Mapped[str | None] = mapped_column(String(64))
    # Why a frame was stored although it failed a check (frames.validation), else None.
    flagged: Mapped[str | None] = mapped_column(Text)
    # The users whose uploads of this frame were refused, each once.
    refused_by: Mapped[list[str]] = mapped_column(
        ARRAY(String(ID_LENGTH)), default=list, server_default="{}"
    )
    # The temporary key of the last upload refused, so a redelivery of it changes nothing.
    refused_key: Mapped[str | None] = mapped_column(Text)


class FrameBucket(Base):
    """Rendered frames per cell of the dashboard's grid (supervisor/frames/grid.py), counted
    in the transaction that marks them, so a grid costs at most GRID_CELLS rows to read."""

    __tablename__ = "frame_buckets"

    workload_id: Mapped[str] = mapped_column(
        ForeignKey("workloads.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    rendered: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WorkloadEvent(Base):
    """One line of a workload's timeline, written in the transaction that made the change."""

    __tablename__ = "workload_events"
    __table_args__ = (Index("ix_workload_events_workload_id_id", "workload_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workload_id: Mapped[str] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    kind: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    frames: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class OutboxMessage(Base):
    """A message decided inside a transaction, sent only after that transaction commits."""

    __tablename__ = "outbox"
    # A workload's User Manager messages wait behind its unsent stop-works
    # (outbox.order.due_rows).
    __table_args__ = (
        Index(
            "ix_outbox_stop_work", "workload_id", "id", postgresql_where=text("topic = 'stop-work'")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workload_id: Mapped[str | None] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class InboxEvent(Base):
    """A User Manager event recorded before its message is acked, deleted once handled.

    If the task carrying it is lost (a killed worker, a flushed Redis), beat dispatches it
    again; handlers are idempotent, so running one twice changes nothing."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_dispatched_at", "dispatched_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workload_id: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    dispatched_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
