"""Thin tasks: take ids, call the domain, decide about retries."""

from __future__ import annotations

import logging

from celery import shared_task

from supervisor import workloads
from supervisor.errors import PeerError
from tasks.runtime import supervisor

logger = logging.getLogger(__name__)


@shared_task(name="tasks.unbind_session", ignore_result=True)
def unbind_session(workload_id: str) -> None:
    """Sent with the grace period as countdown; beat's finish_workloads catches a lost one."""
    try:
        workloads.end_grace(supervisor(), workload_id)
    except Exception:
        logger.warning(
            "could not end a session's grace period; beat will try again",
            extra={"workload_id": workload_id},
            exc_info=True,
        )


@shared_task(
    name="tasks.prepare_workload",
    autoretry_for=(PeerError, ConnectionError),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
def prepare_workload(workload_id: str) -> None:
    try:
        workloads.prepare_workload(supervisor(), workload_id)
    except PeerError as exc:
        if prepare_workload.request.retries >= prepare_workload.max_retries:
            workloads.fail_workload(supervisor(), workload_id, f"gave up: {exc}")
            return
        raise
