"""Hands work to Celery after a commit. Only task names cross this boundary, never objects."""

from __future__ import annotations

from celery import Celery
from redis import Redis

from supervisor.outbox import request_drain
from tasks import names


class CeleryJobs:
    """The `Jobs` of a process that sends tasks: the web process and the worker."""

    def __init__(self, celery: Celery, *, redis_url: str | None = None) -> None:
        self.celery = celery
        self.redis = Redis.from_url(redis_url) if redis_url else None

    def prepare_workload(self, workload_id: str) -> None:
        self.celery.send_task(names.PREPARE_WORKLOAD, args=[workload_id])

    def unbind_later(self, workload_id: str) -> None:
        grace = self.celery.conf.supervisor_settings.unbind_grace_seconds
        self.celery.send_task(names.UNBIND_SESSION, args=[workload_id], countdown=grace)

    def drain_outbox(self) -> None:
        """One drain task for a burst of commits; without Redis, one per call."""
        if self.redis is None or request_drain(self.redis):
            self.celery.send_task(names.DRAIN_OUTBOX)
