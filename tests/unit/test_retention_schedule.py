"""Beat runs the retention sweep on the maintenance queue, and its period comes with the task."""

from __future__ import annotations

from datetime import timedelta

from supervisor.config import Settings
from tasks import names
from tasks.factory import beat_schedule, create_celery


def test_beat_removes_old_workloads_on_the_maintenance_queue() -> None:
    settings = Settings(_env_file=None)

    entry = beat_schedule(settings)["remove-old-workloads"]

    assert entry == {
        "task": names.REMOVE_OLD_WORKLOADS,
        "schedule": timedelta(seconds=names.REMOVAL_INTERVAL_SECONDS),
    }
    assert names.ROUTES[names.REMOVE_OLD_WORKLOADS] == names.MAINTENANCE_QUEUE
    assert settings.workload_retention_seconds == 7 * 24 * 3600


def test_the_worker_knows_the_task() -> None:
    app = create_celery(Settings(_env_file=None, celery_broker_url="memory://"))
    app.loader.import_default_modules()

    assert names.REMOVE_OLD_WORKLOADS in app.tasks
