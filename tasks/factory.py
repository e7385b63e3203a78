"""Builds the Celery app from the same Settings as the Flask app."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Queue

from supervisor.config import Settings, load_settings

WORKLOAD_QUEUE = "supervisor.workloads"
EVENT_QUEUE = "supervisor.events"
OUTBOX_QUEUE = "supervisor.outbox"
MAINTENANCE_QUEUE = "supervisor.maintenance"
QUEUES = (WORKLOAD_QUEUE, EVENT_QUEUE, OUTBOX_QUEUE, MAINTENANCE_QUEUE)
FINISH_INTERVAL_SECONDS = 5.0

TASK_MODULES = (
    "tasks.workload_tasks",
    "tasks.event_tasks",
    "tasks.maintenance_tasks",
)

ROUTES = {
    "tasks.prepare_workload": WORKLOAD_QUEUE,
    "tasks.unbind_session": WORKLOAD_QUEUE,
    "tasks.new_users": EVENT_QUEUE,
    "tasks.frame_rendered": EVENT_QUEUE,
    "tasks.frames_rendered": EVENT_QUEUE,
    "tasks.rendering_completed": EVENT_QUEUE,
    "tasks.user_disconnected": EVENT_QUEUE,
    "tasks.error_sending_frame": EVENT_QUEUE,
    "tasks.drain_outbox": OUTBOX_QUEUE,
    "tasks.demand_users": MAINTENANCE_QUEUE,
    "tasks.reclaim_stale_frames": MAINTENANCE_QUEUE,
    "tasks.rebalance": MAINTENANCE_QUEUE,
    "tasks.recover_stuck_starts": MAINTENANCE_QUEUE,
    "tasks.redispatch_inbox": MAINTENANCE_QUEUE,
    "tasks.finish_workloads": MAINTENANCE_QUEUE,
}


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    every = {
        "drain-outbox": ("tasks.drain_outbox", 2.0),
        "demand-users": ("tasks.demand_users", settings.demand_interval_seconds),
        "reclaim-stale-frames": ("tasks.reclaim_stale_frames", settings.reclaim_interval_seconds),
        "rebalance": ("tasks.rebalance", settings.rebalance_interval_seconds),
        "recover-stuck-starts": ("tasks.recover_stuck_starts", 60.0),
        "finish-workloads": ("tasks.finish_workloads", FINISH_INTERVAL_SECONDS),
        "redispatch-inbox": (
            "tasks.redispatch_inbox",
            max(1.0, settings.inbox_redispatch_seconds / 4),
        ),
    }
    return {
        entry: {"task": task, "schedule": timedelta(seconds=seconds)}
        for entry, (task, seconds) in every.items()
    }


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    app = Celery("session_supervisor", set_as_current=True)
    broker_options: dict[str, object] = {}
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        broker_options["confirm_publish"] = True
    else:
        broker_options["visibility_timeout"] = settings.broker_visibility_timeout_seconds
    app.conf.update(
        broker_url=settings.broker_url,
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
        task_default_queue=WORKLOAD_QUEUE,
        task_queues=[Queue(name, durable=True) for name in QUEUES],
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        beat_schedule=beat_schedule(settings),
        beat_scheduler="tasks.beat:LockedScheduler",
        beat_max_loop_interval=5,
        supervisor_settings=settings,
    )
    app.conf.imports = TASK_MODULES
    from tasks.intake import UserManagerIntake

    app.steps["consumer"].add(UserManagerIntake)
    return app
