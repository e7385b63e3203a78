"""Transactional outbox: messages are written with the state change that decided them and
sent only after that commit. A failed send stays in the table and is retried with backoff.

- `queueing`: add a message to the caller's transaction (one function per kind of message);
- `order`: which rows are due, and which wait behind an older one;
- `senders`: send a row to its peer (AMQP or HTTP);
- `drainer`: drainers claim independent lanes, send them and settle each send in the
  database;
- `rounds`: a burst of commits asks for one drain, which goes round until quiet.
"""

from supervisor.outbox.drainer import LANE_LOCK_CLASS, DrainResult, RecordsDone, drain
from supervisor.outbox.queueing import (
    BLOB_TEMP,
    CATALOG,
    USER_MANAGER,
    USER_SERVICE,
    change_object_state,
    cleanup_user_manager_session,
    delete_temp_blob,
    pending_count,
    record_in_catalog,
    register_with_user_manager,
    to_user_manager,
    to_users,
)
from supervisor.outbox.rounds import drain_until_quiet, request_drain
from supervisor.outbox.senders import BodyPublisher, PeerClients

__all__ = [
    "BLOB_TEMP",
    "CATALOG",
    "LANE_LOCK_CLASS",
    "USER_MANAGER",
    "USER_SERVICE",
    "BodyPublisher",
    "DrainResult",
    "PeerClients",
    "RecordsDone",
    "change_object_state",
    "cleanup_user_manager_session",
    "delete_temp_blob",
    "drain",
    "drain_until_quiet",
    "pending_count",
    "record_in_catalog",
    "register_with_user_manager",
    "request_drain",
    "to_user_manager",
    "to_users",
]
