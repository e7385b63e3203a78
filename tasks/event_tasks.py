"""One thin task per User Manager topic: take the inbox row, call the domain, retry peers."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from supervisor import events, inbox
from supervisor.errors import PeerError
from supervisor.messaging import session_routing_key
from supervisor.refusals import refuse
from tasks.runtime import supervisor

logger = logging.getLogger(__name__)

RETRY = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (PeerError, OperationalError, ConnectionError),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}


def _run(task: Task, inbox_id: int) -> Any:
    sv = supervisor()
    event = inbox.claim(sv.db, inbox_id)
    if event is None:
        return "already-handled"
    handler = events.HANDLERS[event.topic]
    try:
        result = handler(sv, event)
    except events.EventRefused as exc:
        _refuse(sv, event, exc)
        inbox.done(sv.db, inbox_id)
        return "refused"
    except PeerError as exc:
        if task.request.retries >= task.max_retries and event.topic in _GIVE_UP:
            result = _GIVE_UP[event.topic](sv, event, f"gave up: {exc}")
            inbox.done(sv.db, inbox_id)
            return result
        inbox.note_failure(sv.db, inbox_id, str(exc))
        raise
    inbox.done(sv.db, inbox_id)
    return result


_GIVE_UP = {
    "user-frame-rendered": events.give_up_on_frame,
    "user-error-sending-frame": events.give_up_on_frame,
}


@shared_task(name="tasks.new_users", **RETRY)
def new_users(self: Task, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name="tasks.frame_rendered", **RETRY)
def frame_rendered(self: Task, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name="tasks.frames_rendered", **RETRY)
def frames_rendered(self: Task, inbox_ids: list[int]) -> dict[str, int]:
    """A batch of user-frame-rendered events from one intake flush. Events the batch cannot
    settle (a peer failing for one upload) go on alone through `frame_rendered` and its
    retries; a crash redoes the batch, which changes nothing for the events already done."""
    sv = supervisor()
    claimed = inbox.claim_many(sv.db, inbox_ids)
    if not claimed:
        return {}
    outcomes = events.record_rendered_frames(sv, [event for _, event in claimed])
    finished: list[int] = []
    counts: Counter[str] = Counter()
    for (inbox_id, event), outcome in zip(claimed, outcomes, strict=True):
        if isinstance(outcome, events.EventRefused):
            _refuse(sv, event, outcome)
            finished.append(inbox_id)
            counts["refused"] += 1
        elif isinstance(outcome, Exception):
            inbox.note_failure(sv.db, inbox_id, str(outcome))
            frame_rendered.apply_async(args=[inbox_id], countdown=1)
            counts["retried-alone"] += 1
        else:
            finished.append(inbox_id)
            counts[outcome] += 1
    inbox.done_many(sv.db, finished)
    return dict(counts)


def _refuse(sv: Any, event: Any, exc: events.EventRefused) -> None:
    refuse(
        sv,
        reason=exc.reason,
        detail=exc.detail,
        routing_key=session_routing_key(event.session_id),
        body=json.dumps(event.to_task()),
        workload_id=event.session_id,
        user_id=event.user_id,
    )


@shared_task(name="tasks.rendering_completed", **RETRY)
def rendering_completed(self: Task, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name="tasks.user_disconnected", **RETRY)
def user_disconnected(self: Task, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name="tasks.error_sending_frame", **RETRY)
def error_sending_frame(self: Task, inbox_id: int) -> Any:
    return _run(self, inbox_id)


TASK_FOR_TOPIC = {
    "new-users": "tasks.new_users",
    "user-frame-rendered": "tasks.frame_rendered",
    "user-rendering-completed": "tasks.rendering_completed",
    "user-disconnected": "tasks.user_disconnected",
    "user-error-sending-frame": "tasks.error_sending_frame",
}
