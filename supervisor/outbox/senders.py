"""Sending one row to its destination, and a job's rows in order."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.errors import PeerError
from supervisor.outbox.order import Due
from supervisor.outbox.queueing import BLOB_TEMP, CATALOG, USER_MANAGER, USER_SERVICE

logger = logging.getLogger(__name__)


class BodyPublisher(Protocol):
    def publish(self, body: dict[str, Any]) -> None: ...


class PeerClients(Protocol):
    """The slice of supervisor.peers.Peers the outbox sends through."""

    users: Any
    catalog: Any
    blob: Any
    user_manager: Any
    longest_call_seconds: float


@dataclass
class JobOutcome:
    done: list[Due] = field(default_factory=list)
    sent: int = 0
    failed: tuple[Due, Exception] | None = None


def send_in_order(
    publisher: BodyPublisher, peers: PeerClients, blocked: set[str], job: list[Due]
) -> JobOutcome:
    """Send a job's rows in order; stop at the first transient failure (the rest wait for
    it), and skip a destination another job found failing. A row its peer refused for good
    is logged and done with (deleted, never resent)."""
    outcome = JobOutcome()
    for row in job:
        if row.destination in blocked:
            break
        try:
            _send(row, publisher, peers)
            outcome.sent += 1
        except PeerError as exc:
            if exc.transient:
                blocked.add(row.destination)
                outcome.failed = (row, exc)
                break
            _log_dropped(row, exc)
        except Exception as exc:  # noqa: BLE001 (any other send failure is kept and retried)
            blocked.add(row.destination)
            outcome.failed = (row, exc)
            break
        outcome.done.append(row)
    return outcome


def _send(row: Due, publisher: BodyPublisher, peers: PeerClients) -> None:
    body = row.body
    if row.destination == USER_MANAGER:
        _send_to_user_manager(row, publisher, peers)
    elif row.destination == USER_SERVICE:
        peers.users.send(body["user_id"], body["topic"], body["data"])
    elif row.destination == CATALOG and row.topic == "change-state":
        peers.catalog.change_state(**body)
    elif row.destination == CATALOG:
        peers.catalog.add_rendered_image(**body)
    elif row.destination == BLOB_TEMP:
        peers.blob.delete_temp(body["key"])
    else:
        raise ValueError(f"unknown outbox destination {row.destination!r}")
    logger.info(
        "outbox message sent",
        extra={
            "workload_id": row.workload_id,
            "destination": row.destination,
            "topic": row.topic,
            "user_id": body.get("user_id"),
            "frame": body.get("frame_number"),
            "outbox_id": row.id,
        },
    )


def _send_to_user_manager(row: Due, publisher: BodyPublisher, peers: PeerClients) -> None:
    """Registration and clean-up are HTTP calls, the rest AMQP; all in one order per
    workload, so `new-session` precedes the demand after it, and `cleanup-session` the
    release before it."""
    if row.topic == "new-session":
        peers.user_manager.register_session(row.workload_id, row.body["data"]["user_count"])
    elif row.topic == "cleanup-session":
        peers.user_manager.cleanup_session(row.workload_id)
    else:
        publisher.publish(row.body)


def _log_dropped(row: Due, exc: PeerError) -> None:
    logger.warning(
        "outbox message refused by its peer, dropped",
        extra={
            "workload_id": row.workload_id,
            "destination": row.destination,
            "topic": row.topic,
            "user_id": row.body.get("user_id"),
            "error": str(exc)[:200],
        },
    )
