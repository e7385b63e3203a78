"""Thin tasks: take ids, call the domain, decide about retries."""

from __future__ import annotations

import logging

from celery import shared_task

from supervisor import workloads
from supervisor.errors import PeerError
from tasks import names
from tasks.base import SupervisorTask

logger = logging.getLogger(__name__)


@shared_task(name=names.UNBIND_SESSION, base=SupervisorTask, bind=True, ignore_result=True)
def unbind_session(self: SupervisorTask, workload_id: str) -> None:
    """Sent with the grace period as countdown; beat's finish_workloads catches a lost one."""
    try:
        workloads.end_grace(self.services, workload_id)
    except Exception:
        logger.warning(
            "could not end a session's grace period; beat will try again",
            extra={"workload_id": workload_id},
            exc_info=True,
        )


@shared_task(
    name=names.PREPARE_WORKLOAD,
    base=SupervisorTask,
    bind=True,
    autoretry_for=(PeerError, ConnectionError),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
def prepare_workload(self: SupervisorTask, workload_id: str) -> None:
    try:
        workloads.prepare_workload(self.services, workload_id)
    except PeerError as exc:
        if self.request.retries >= self.max_retries:
            workloads.fail_workload(self.services, workload_id, f"gave up: {exc}")
            return
        raise
