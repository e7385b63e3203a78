"""Beat's tasks. Each skips a run while a previous one is still going (a Redis lock)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task

from supervisor import inbox, maintenance, outbox, workloads
from supervisor.refusals import refuse
from supervisor.services import Services
from tasks import names
from tasks.base import SupervisorTask

logger = logging.getLogger(__name__)


@contextmanager
def only_one(sv: Services, name: str, ttl: int = 300) -> Iterator[bool]:
    lock = sv.redis.lock(f"supervisor:task-lock:{name}", timeout=ttl)
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


def _guarded(sv: Services, name: str, work: Callable[[Services], Any], every: float) -> Any:
    """Run `work` unless another run of it holds the lock. The lock expires after a few of
    the task's periods (and two peer timeouts, for a run that calls peers), so a worker
    killed mid-run holds the task back for that long, not for minutes."""
    ttl = max(3 * every, 2 * sv.settings.peer_timeout_seconds + 5)
    with only_one(sv, name, ttl=int(ttl) + 1) as acquired:
        if not acquired:
            logger.info("periodic task still running elsewhere; skipped", extra={"task": name})
            return None
        return work(sv)


@shared_task(
    name=names.DRAIN_OUTBOX, base=SupervisorTask, bind=True, acks_late=False, ignore_result=True
)
def drain_outbox(self: SupervisorTask) -> int:
    sv = self.services
    return outbox.drain_until_quiet(
        sv.db,
        sv.publisher,
        sv.peers,
        sv.redis,
        on_all_recorded=lambda ids: workloads.complete_workloads(sv, ids),
    )


@shared_task(name=names.DEMAND_USERS, base=SupervisorTask, bind=True, ignore_result=True)
def demand_users(self: SupervisorTask) -> Any:
    sv = self.services
    return _guarded(
        sv, "demand_users", maintenance.demand_users, sv.settings.demand_interval_seconds
    )


@shared_task(name=names.RECLAIM_STALE_FRAMES, base=SupervisorTask, bind=True, ignore_result=True)
def reclaim_stale_frames(self: SupervisorTask) -> Any:
    sv = self.services
    every = sv.settings.reclaim_interval_seconds
    return _guarded(sv, "reclaim_stale_frames", maintenance.reclaim_stale_frames, every)


@shared_task(name=names.REBALANCE, base=SupervisorTask, bind=True, ignore_result=True)
def rebalance(self: SupervisorTask) -> Any:
    sv = self.services
    return _guarded(sv, "rebalance", maintenance.rebalance, sv.settings.rebalance_interval_seconds)


@shared_task(name=names.FINISH_WORKLOADS, base=SupervisorTask, bind=True, ignore_result=True)
def finish_workloads(self: SupervisorTask) -> Any:
    """Backstops: complete workloads whose every record is confirmed, and unbind ended
    ones past their grace period, when the call or task that should have was lost."""

    def work(sv: Services) -> dict[str, list[str]]:
        completed = workloads.complete_workloads(sv, maintenance.fully_recorded(sv))
        unbound = [w for w in workloads.overdue_unbindings(sv) if workloads.end_grace(sv, w)]
        return {"completed": completed, "unbound": unbound}

    return _guarded(self.services, "finish_workloads", work, names.FINISH_INTERVAL_SECONDS)


@shared_task(name=names.REMOVE_OLD_WORKLOADS, base=SupervisorTask, bind=True, ignore_result=True)
def remove_old_workloads(self: SupervisorTask) -> Any:
    """Ended workloads past WORKLOAD_RETENTION_SECONDS go, with their frames and users."""
    sv = self.services
    every = names.REMOVAL_INTERVAL_SECONDS
    return _guarded(sv, "remove_old_workloads", maintenance.remove_old_workloads, every)


@shared_task(name=names.REDISPATCH_INBOX, base=SupervisorTask, bind=True, ignore_result=True)
def redispatch_inbox(self: SupervisorTask) -> int:
    """Events whose task was lost (killed worker, flushed broker) are handed out again."""
    sv = self.services
    due = inbox.due_again(sv.db, older_than=sv.settings.inbox_redispatch_seconds)
    for inbox_id, topic in due:
        if not topic:
            refuse(
                sv,
                reason="handling-failed-repeatedly",
                detail=f"inbox event {inbox_id}",
                routing_key=None,
                body=str(inbox_id),
            )
            inbox.done(sv.db, inbox_id)
            continue
        self.app.send_task(names.TASK_FOR_TOPIC[topic], args=[inbox_id])
    return len(due)


@shared_task(name=names.RECOVER_STUCK_STARTS, base=SupervisorTask, bind=True, ignore_result=True)
def recover_stuck_starts(self: SupervisorTask) -> list[str]:
    sv = self.services
    stuck = maintenance.stuck_starts(sv)
    for workload_id in stuck:
        logger.warning("re-dispatching a stuck start", extra={"workload_id": workload_id})
        sv.jobs.prepare_workload(workload_id)
    return stuck
