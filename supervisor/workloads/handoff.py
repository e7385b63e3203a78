"""Work a workload hands to a worker after the commit that decided it: the outbox drain and
the unbinding at the end of the grace period. A hand-off that fails never fails the caller."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)


def send_outbox_soon(sv: Services) -> None:
    """Ask a worker to drain the outbox now. The messages are already committed, so if that
    request fails the periodic drain sends them a little later; the caller is not failed."""
    try:
        sv.jobs.drain_outbox()
    except Exception:
        logger.warning("could not dispatch an outbox drain; the periodic drain will", exc_info=True)


def unbind_after_grace(sv: Services, workload_id: str) -> None:
    """A finished workload keeps its binding a while: events still in flight (a late
    duplicate, a last re-upload) are then consumed and their uploads cleaned up, instead
    of being dropped by the broker as unroutable and left in the temporary store."""
    try:
        sv.jobs.unbind_later(workload_id)
    except Exception:
        logger.warning(
            "could not schedule the unbinding of a finished session; unbinding now",
            extra={"workload_id": workload_id},
            exc_info=True,
        )
        unbind_quietly(sv, workload_id)


def unbind_quietly(sv: Services, workload_id: str) -> None:
    """Stop routing the session's messages to us; a leftover binding only routes messages
    that are then refused as an unknown or finished session, so failure is logged only."""
    try:
        sv.bindings.unbind(workload_id)
    except Exception:
        logger.warning(
            "could not unbind a finished session", extra={"workload_id": workload_id}, exc_info=True
        )
