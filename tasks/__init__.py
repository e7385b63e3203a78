"""Celery side of the service: the app (tasks.factory, tasks.celery_app), the tasks, beat
and the User Manager intake. `celery -A tasks` and `celery -A tasks.celery_app` both work;
importing this package builds nothing, so `tasks.names` stays free to import anywhere."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from tasks.celery_app import app

        return app
    raise AttributeError(name)
