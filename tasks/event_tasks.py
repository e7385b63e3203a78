"""One thin task per User Manager topic: take the inbox row, call the domain, retry peers."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from celery import shared_task
from sqlalchemy.exc import OperationalError

from supervisor import handlers, inbox, metrics
from supervisor.errors import PeerError
from supervisor.frames import pipeline
from supervisor.messages import FrameRendered
from supervisor.refusals import Refused
from tasks import names
from tasks.base import SupervisorTask

logger = logging.getLogger(__name__)

RETRY = {
    "base": SupervisorTask,
    "bind": True,
    "acks_late": True,
    "autoretry_for": (PeerError, OperationalError, ConnectionError),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}


def _run(task: SupervisorTask, inbox_id: int) -> Any:
    sv = task.services
    event = inbox.claim(sv.db, inbox_id)
    if event is None:
        return "already-handled"
    handler = handlers.HANDLERS[event.topic]
    try:
        result = handler(sv, event)
    except Refused as exc:
        handlers.refuse_event(sv, event, exc)
        inbox.done(sv.db, inbox_id)
        metrics.count_event(event.topic, "refused")
        return "refused"
    except PeerError as exc:
        if task.request.retries >= task.max_retries and event.topic in _GIVE_UP:
            result = _GIVE_UP[event.topic](sv, event, f"gave up: {exc}")
            inbox.done(sv.db, inbox_id)
            metrics.count_event(event.topic, "gave-up")
            return result
        inbox.note_failure(sv.db, inbox_id, str(exc))
        metrics.count_event(event.topic, "retried")
        raise
    inbox.done(sv.db, inbox_id)
    metrics.count_event(event.topic, result)
    return result


_GIVE_UP = {
    "user-frame-rendered": pipeline.give_up_upload,
    "user-error-sending-frame": pipeline.give_up_upload,
}


@shared_task(name=names.NEW_USERS, **RETRY)
def new_users(self: SupervisorTask, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name=names.FRAME_RENDERED, **RETRY)
def frame_rendered(self: SupervisorTask, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name=names.FRAMES_RENDERED, **RETRY)
def frames_rendered(self: SupervisorTask, inbox_ids: list[int]) -> dict[str, int]:
    """A batch of user-frame-rendered events from one intake flush. Events the batch cannot
    settle (a peer failing for one upload) go on alone through `frame_rendered` and its
    retries; a crash redoes the batch, which changes nothing for the events already done."""
    sv = self.services
    claimed = inbox.claim_many(sv.db, inbox_ids)
    if not claimed:
        return {}
    outcomes = pipeline.record_rendered_frames(sv, [event for _, event in claimed])
    finished: list[int] = []
    counts: Counter[str] = Counter()
    for (inbox_id, event), outcome in zip(claimed, outcomes, strict=True):
        if isinstance(outcome, Refused):
            handlers.refuse_event(sv, event, outcome)
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
    for outcome, count in counts.items():
        metrics.count_event(FrameRendered.topic, outcome, count)
    return dict(counts)


@shared_task(name=names.RENDERING_COMPLETED, **RETRY)
def rendering_completed(self: SupervisorTask, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name=names.USER_DISCONNECTED, **RETRY)
def user_disconnected(self: SupervisorTask, inbox_id: int) -> Any:
    return _run(self, inbox_id)


@shared_task(name=names.ERROR_SENDING_FRAME, **RETRY)
def error_sending_frame(self: SupervisorTask, inbox_id: int) -> Any:
    return _run(self, inbox_id)
