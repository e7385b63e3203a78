"""Beat's tasks. Each skips a run while a previous one is still going (a Redis lock)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import current_app, shared_task

from supervisor import inbox, maintenance, outbox, workloads
from supervisor.refusals import refuse
from tasks.event_tasks import TASK_FOR_TOPIC
from tasks.factory import FINISH_INTERVAL_SECONDS
from tasks.runtime import supervisor

logger = logging.getLogger(__name__)


@contextmanager
def only_one(name: str, ttl: int = 300) -> Iterator[bool]:
    lock = supervisor().redis.lock(f"supervisor:task-lock:{name}", timeout=ttl)
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


def _guarded(name: str, work: Callable[[], Any], every: float) -> Any:
    """Run `work` unless another run of it holds the lock. The lock expires after a few of
    the task's periods (and two peer timeouts, for a run that calls peers), so a worker
    killed mid-run holds the task back for that long, not for minutes."""
    settings = supervisor().settings
    ttl = max(3 * every, 2 * settings.peer_timeout_seconds + 5)
    with only_one(name, ttl=int(ttl) + 1) as acquired:
        if not acquired:
            logger.info("periodic task still running elsewhere; skipped", extra={"task": name})
            return None
        return work()


@shared_task(name="tasks.drain_outbox", acks_late=False, ignore_result=True)
def drain_outbox() -> int:
    sv = supervisor()
    return outbox.drain_until_quiet(
        sv.db,
        sv.publisher,
        sv.peers,
        sv.redis,
        on_all_recorded=lambda ids: workloads.complete_workloads(sv, ids),
    )


@shared_task(name="tasks.demand_users", ignore_result=True)
def demand_users() -> Any:
    every = supervisor().settings.demand_interval_seconds
    return _guarded("demand_users", lambda: maintenance.demand_users(supervisor()), every)


@shared_task(name="tasks.reclaim_stale_frames", ignore_result=True)
def reclaim_stale_frames() -> Any:
    every = supervisor().settings.reclaim_interval_seconds
    return _guarded(
        "reclaim_stale_frames", lambda: maintenance.reclaim_stale_frames(supervisor()), every
    )


@shared_task(name="tasks.rebalance", ignore_result=True)
def rebalance() -> Any:
    every = supervisor().settings.rebalance_interval_seconds
    return _guarded("rebalance", lambda: maintenance.rebalance(supervisor()), every)


@shared_task(name="tasks.finish_workloads", ignore_result=True)
def finish_workloads() -> Any:
    """Backstops: complete workloads whose every record is confirmed, and unbind ended
    ones past their grace period, when the call or task that should have was lost."""

    def work() -> dict[str, list[str]]:
        sv = supervisor()
        completed = workloads.complete_workloads(sv, maintenance.fully_recorded(sv))
        unbound = [w for w in workloads.overdue_unbindings(sv) if workloads.end_grace(sv, w)]
        return {"completed": completed, "unbound": unbound}

    return _guarded("finish_workloads", work, FINISH_INTERVAL_SECONDS)


@shared_task(name="tasks.redispatch_inbox", ignore_result=True)
def redispatch_inbox() -> int:
    """Events whose task was lost (killed worker, flushed broker) are handed out again."""
    sv = supervisor()
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
        current_app.send_task(TASK_FOR_TOPIC[topic], args=[inbox_id])
    return len(due)


@shared_task(name="tasks.recover_stuck_starts", ignore_result=True)
def recover_stuck_starts() -> list[str]:
    sv = supervisor()
    stuck = maintenance.stuck_starts(sv)
    for workload_id in stuck:
        logger.warning("re-dispatching a stuck start", extra={"workload_id": workload_id})
        sv.jobs.prepare_workload(workload_id)
    return stuck
