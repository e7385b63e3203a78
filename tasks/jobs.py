"""Hands work to Celery after a commit. Only task names cross this boundary, never objects."""

from __future__ import annotations

from celery import Celery
from redis import Redis

from supervisor.outbox import request_drain


class CeleryJobs:
    def __init__(self, celery: Celery | None = None, *, redis_url: str | None = None) -> None:
        self._celery = celery
        self.redis = Redis.from_url(redis_url) if redis_url else None

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            from tasks.factory import create_celery

            self._celery = create_celery()
        return self._celery

    def prepare_workload(self, workload_id: str) -> None:
        self.celery.send_task("tasks.prepare_workload", args=[workload_id])

    def unbind_later(self, workload_id: str) -> None:
        grace = self.celery.conf.supervisor_settings.unbind_grace_seconds
        self.celery.send_task("tasks.unbind_session", args=[workload_id], countdown=grace)

    def drain_outbox(self) -> None:
        """One drain task for a burst of commits; without Redis, one per call."""
        if self.redis is None or request_drain(self.redis):
            self.celery.send_task("tasks.drain_outbox")
