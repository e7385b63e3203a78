"""One wiring path: the web process and the worker use the settings they are given, never
the environment's, and send tasks through the one Celery app built from them."""

from __future__ import annotations

from typing import Any

import pytest
from celery.signals import worker_process_init

from app import EXTENSION, create_app
from supervisor.config import Settings
from tasks import names
from tasks.base import process_services
from tasks.factory import create_celery

GIVEN_BROKER = "memory://given-broker/"
GIVEN_GRACE = 321.0


@pytest.fixture
def given() -> Settings:
    return Settings(
        _env_file=None,
        database_url="postgresql+psycopg://given@127.0.0.1:5432/given",
        redis_url="redis://127.0.0.1:6379/7",
        celery_broker_url=GIVEN_BROKER,
        user_manager_broker_url="memory://",
        unbind_grace_seconds=GIVEN_GRACE,
    )


@pytest.fixture(autouse=True)
def environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://environment-broker/")
    monkeypatch.setenv("UNBIND_GRACE_SECONDS", "5")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://environment@127.0.0.1/env")


def _record_sends(celery: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    sent: list[tuple[str, Any]] = []
    monkeypatch.setattr(celery, "send_task", lambda name, **options: sent.append((name, options)))
    return sent


def test_create_app_sends_tasks_to_the_broker_of_its_settings(
    given: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(given)
    celery = app.extensions["celery"]
    sv = app.extensions[EXTENSION]

    with celery.connection_for_write() as connection:
        assert connection.hostname == "given-broker"
    with celery.connection_for_read() as connection:
        assert connection.hostname == "given-broker"
    assert celery.conf.supervisor_settings is given
    assert sv.settings is given
    assert sv.jobs.celery is celery, "one Celery app per web process"

    sent = _record_sends(celery, monkeypatch)
    sv.jobs.prepare_workload("w1")
    sv.jobs.unbind_later("w1")
    assert sent == [
        (names.PREPARE_WORKLOAD, {"args": ["w1"]}),
        (names.UNBIND_SESSION, {"args": ["w1"], "countdown": GIVEN_GRACE}),
    ]


def test_the_worker_builds_its_supervisor_from_the_apps_settings(given: Settings) -> None:
    celery = create_celery(given)
    try:
        worker_process_init.send(sender=None)
        sv = celery.services  # type: ignore[attr-defined]
        assert sv.settings is given
        assert str(sv.db.engine.url).endswith("/given")
        assert sv.jobs.celery is celery
        assert process_services(celery) is sv, "built once per process"
    finally:
        celery.services.close()  # type: ignore[attr-defined]


def test_a_worker_without_a_pool_child_builds_its_supervisor_on_first_use(
    given: Settings,
) -> None:
    celery = create_celery(given)
    sv = process_services(celery)
    try:
        assert sv.settings is given
        assert process_services(celery) is sv
    finally:
        sv.close()
