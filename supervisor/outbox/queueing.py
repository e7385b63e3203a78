"""Queueing outbox rows: each function adds a message to the caller's transaction, so it is
sent only if the state change that decided it commits."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from supervisor.messaging import user_manager_body
from supervisor.models import OutboxMessage

USER_MANAGER = "user-manager"
USER_SERVICE = "user-service"
CATALOG = "catalog"
BLOB_TEMP = "blob-temp"
DESTINATIONS = (USER_MANAGER, USER_SERVICE, CATALOG, BLOB_TEMP)
CLEANUP_SESSION = "cleanup-session"


def to_user_manager(session: Session, workload_id: str, topic: str, data: dict[str, Any]) -> None:
    """Queue a message for USER_MANAGER_EXCHANGE in the caller's transaction."""
    session.add(
        OutboxMessage(
            workload_id=workload_id,
            destination=USER_MANAGER,
            topic=topic,
            body=user_manager_body(topic, workload_id, data),
        )
    )


def register_with_user_manager(session: Session, workload_id: str, user_count: int) -> None:
    """Queue `new-session` (HTTP) in the workload's User Manager order: it goes before the
    demand queued after it, which a User Manager that forgot us would otherwise drop."""
    to_user_manager(session, workload_id, "new-session", {"user_count": user_count})


def cleanup_user_manager_session(session: Session, workload_id: str) -> None:
    """Queue `cleanup-session` (HTTP), after whatever the workload sent the User Manager."""
    to_user_manager(session, workload_id, CLEANUP_SESSION, {})


def to_users(
    session: Session,
    workload_id: str,
    user_ids: Iterable[str],
    topic: str,
    data_for: Callable[[str], dict[str, Any]],
) -> None:
    """Queue one User Service message per user in the caller's transaction."""
    session.add_all(
        OutboxMessage(
            workload_id=workload_id,
            destination=USER_SERVICE,
            topic=topic,
            body={"user_id": user_id, "topic": topic, "data": data_for(user_id)},
        )
        for user_id in user_ids
    )


def record_in_catalog(
    session: Session,
    workload_id: str,
    *,
    object_id: str,
    customer_id: str,
    frame_number: int,
    image_file_path: str,
) -> None:
    """Queue the catalog record of a stored frame, in the transaction that marks it rendered."""
    session.add(
        OutboxMessage(
            workload_id=workload_id,
            destination=CATALOG,
            topic="add-rendered-image",
            body={
                "object_id": object_id,
                "customer_id": customer_id,
                "frame_number": frame_number,
                "image_file_path": image_file_path,
            },
        )
    )


def change_object_state(
    session: Session, workload_id: str, *, object_id: str, customer_id: str, state: str
) -> None:
    """Queue the catalog's `change-state` of the workload's object."""
    session.add(
        OutboxMessage(
            workload_id=workload_id,
            destination=CATALOG,
            topic="change-state",
            body={"object_id": object_id, "customer_id": customer_id, "state": state},
        )
    )


def delete_temp_blob(session: Session, workload_id: str, key: str) -> None:
    """Queue the removal of an uploaded temporary image; removal is idempotent."""
    session.add(
        OutboxMessage(
            workload_id=workload_id, destination=BLOB_TEMP, topic="delete-temp", body={"key": key}
        )
    )


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutboxMessage)) or 0
