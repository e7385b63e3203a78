"""The per-process Supervisor used by tasks and the intake, built on first use.

Keyed by process id: a pool child forked after the parent built one gets its own, so no
connection or HTTP session crosses a fork."""

from __future__ import annotations

import os
import threading

from celery import current_app
from celery.signals import setup_logging, worker_process_shutdown

from supervisor.logs import configure_logging
from supervisor.service import Supervisor
from tasks.jobs import CeleryJobs

_lock = threading.Lock()
_supervisor: Supervisor | None = None
_pid: int | None = None


def supervisor() -> Supervisor:
    global _supervisor, _pid
    with _lock:
        if _supervisor is None or _pid != os.getpid():
            settings = current_app.conf.supervisor_settings
            _supervisor = Supervisor.from_settings(
                settings, jobs=CeleryJobs(current_app, redis_url=settings.redis_url)
            )
            _pid = os.getpid()
        return _supervisor


@setup_logging.connect
def _json_logs(**_kwargs: object) -> None:
    configure_logging()


@worker_process_shutdown.connect
def _close(**_kwargs: object) -> None:
    global _supervisor
    with _lock:
        if _supervisor is not None and _pid == os.getpid():
            _supervisor.close()
        _supervisor = None
