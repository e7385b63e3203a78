"""Celery side of the service. `celery -A tasks` and `celery -A tasks.celery_app` both work;
the app is built only when first asked for, never when this package is imported."""

from __future__ import annotations

from typing import Any

from tasks.factory import create_celery

__all__ = ["create_celery"]


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from tasks.celery_app import app

        return app
    raise AttributeError(name)
