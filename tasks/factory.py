"""Builds the Celery app from the same Settings as the Flask app."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Queue

from supervisor.config import Settings
from tasks import names
from tasks.base import SupervisorTask
from tasks.intake import UserManagerIntake

TASK_MODULES = (
    "tasks.workload_tasks",
    "tasks.event_tasks",
    "tasks.maintenance_tasks",
)


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    every = {
        "drain-outbox": (names.DRAIN_OUTBOX, 2.0),
        "demand-users": (names.DEMAND_USERS, settings.demand_interval_seconds),
        "reclaim-stale-frames": (names.RECLAIM_STALE_FRAMES, settings.reclaim_interval_seconds),
        "rebalance": (names.REBALANCE, settings.rebalance_interval_seconds),
        "recover-stuck-starts": (names.RECOVER_STUCK_STARTS, 60.0),
        "finish-workloads": (names.FINISH_WORKLOADS, names.FINISH_INTERVAL_SECONDS),
        "remove-old-workloads": (names.REMOVE_OLD_WORKLOADS, names.REMOVAL_INTERVAL_SECONDS),
        "redispatch-inbox": (
            names.REDISPATCH_INBOX,
            max(1.0, settings.inbox_redispatch_seconds / 4),
        ),
    }
    return {
        entry: {"task": task, "schedule": timedelta(seconds=seconds)}
        for entry, (task, seconds) in every.items()
    }


def create_celery(settings: Settings) -> Celery:
    """The one Celery app of a process, configured from `settings` alone (the worker's
    from the environment, the web's from what create_app was given)."""
    app = Celery("session_supervisor", set_as_current=True, task_cls=SupervisorTask)
    broker_options: dict[str, object] = {}
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        broker_options["confirm_publish"] = True
    else:
        broker_options["visibility_timeout"] = settings.broker_visibility_timeout_seconds
    app.conf.update(
        broker_url=settings.broker_url,
        # Celery lets CELERY_BROKER_URL in the environment override broker_url; the read
        # and write URLs come first, so the app uses the broker of the settings it was given.
        broker_read_url=settings.broker_url,
        broker_write_url=settings.broker_url,
        broker_transport_options=broker_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=300,
        task_soft_time_limit=240,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=names.WORKLOAD_QUEUE,
        task_queues=[Queue(name, durable=True) for name in names.QUEUES],
        task_routes={name: {"queue": queue} for name, queue in names.ROUTES.items()},
        beat_schedule=beat_schedule(settings),
        beat_scheduler="tasks.beat:LockedScheduler",
        beat_max_loop_interval=5,
        supervisor_settings=settings,
    )
    app.conf.imports = TASK_MODULES
    app.steps["consumer"].add(UserManagerIntake)
    return app
