"""Every task's base class, and the worker signals that give each worker process its own
`Services`, built from the Celery app's settings.

A prefork child builds its `Services` in `worker_process_init`, after the fork, so no
database connection, Redis socket or HTTP pool is ever shared with the parent. A worker
without child processes (`--pool solo` or `threads`) builds it on the first task.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, current_app
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from supervisor.logs import configure_logging
from supervisor.services import Services
from tasks.jobs import CeleryJobs

logger = logging.getLogger(__name__)

_build_lock = threading.Lock()


def build_services(app: Celery) -> Services:
    """A `Services` for this process from the app's settings, sending its work to `app`."""
    settings = app.conf.supervisor_settings
    return Services.from_settings(settings, jobs=CeleryJobs(app, redis_url=settings.redis_url))


def process_services(app: Celery) -> Services:
    """The `Services` of the worker process running `app`'s tasks."""
    sv: Services | None = getattr(app, "services", None)
    if sv is None:
        with _build_lock:
            sv = getattr(app, "services", None)
            if sv is None:
                sv = build_services(app)
                app.services = sv  # type: ignore[attr-defined]
    return sv


class SupervisorTask(Task):
    """Tasks are thin: they take ids, call a `supervisor/` function with `self.services`,
    and decide about retries."""

    abstract = True

    @property
    def services(self) -> Services:
        return process_services(self.app)


@worker_process_init.connect
def _build_in_child(**_kwargs: Any) -> None:
    # The parent process never builds one for tasks (its intake consumer has its own), so
    # nothing inherited is dropped here.
    app = current_app._get_current_object()
    app.services = build_services(app)


@worker_process_shutdown.connect
def _close_in_child(**_kwargs: Any) -> None:
    sv: Services | None = getattr(current_app, "services", None)
    if sv is not None:
        sv.close()
        current_app.services = None  # type: ignore[attr-defined]


@setup_logging.connect
def _json_logs(**_kwargs: Any) -> None:
    configure_logging()
