"""The operator dashboard's read side: every workload at a glance, one in detail, and the
previews of its last frames. Documents are shared by every viewer for a second
(supervisor/snapshots.py), so watching costs the same for one viewer or many."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.dashboard.documents import workload_document
from supervisor.dashboard.documents import workload_list as _workload_list
from supervisor.dashboard.thumbnails import Thumbnail, thumbnail
from supervisor.errors import ThumbnailUnavailable
from supervisor.keys import validate_id
from supervisor.snapshots import Snapshot, shared

if TYPE_CHECKING:
    from supervisor.services import Services

__all__ = [
    "Snapshot",
    "Thumbnail",
    "ThumbnailUnavailable",
    "thumbnail",
    "workload_list",
    "workload_snapshot",
]


def workload_list(sv: Services) -> Snapshot:
    """Every active workload and those ended in the last day."""
    return shared(sv.redis, "supervisor:dashboard:list", lambda: _workload_list(sv))


def workload_snapshot(sv: Services, customer_id: str) -> Snapshot:
    """The customer's latest workload in detail; NoActiveWorkload if it has none."""
    validate_id("customer_id", customer_id)
    key = f"supervisor:dashboard:workload:{customer_id}"
    return shared(sv.redis, key, lambda: workload_document(sv, customer_id))
