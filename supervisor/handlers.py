"""What the supervisor does with each User Manager event: one handler per topic.

Handlers are safe under at-least-once delivery and any number of worker processes:
- every state change is a conditional statement, so a repeated event changes nothing;
- everything that touches a workload's assignments first locks its row (`FOR UPDATE`),
  so two workers never hand the same frames to different users;
- messages to peers are written to the outbox in the same transaction.

A handler raises `Refused` for an event that does not fit our state; `refuse_event` logs,
counts and dead-letters it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from supervisor import users
from supervisor.frames import pipeline
from supervisor.messages import (
    ErrorSendingFrame,
    Event,
    FrameRendered,
    NewUsers,
    RenderingCompleted,
    UserDisconnected,
)
from supervisor.messaging import session_routing_key
from supervisor.refusals import Refused, refuse

if TYPE_CHECKING:
    from supervisor.services import Services

HANDLERS: dict[str, Callable[[Services, Any], Any]] = {
    NewUsers.topic: users.add_users,
    FrameRendered.topic: pipeline.record_rendered_frame,
    RenderingCompleted.topic: users.user_finished_list,
    UserDisconnected.topic: users.user_disconnected,
    ErrorSendingFrame.topic: users.user_could_not_send,
}


def refuse_event(sv: Services, event: Event, refused: Refused) -> None:
    """Log, count and dead-letter an event a handler refused; its dead letter is the
    event's JSON form."""
    refuse(
        sv,
        reason=refused.reason,
        detail=refused.detail,
        routing_key=session_routing_key(event.session_id),
        body=json.dumps(event.to_body()),
        workload_id=event.session_id,
        user_id=None if isinstance(event, NewUsers) else event.user_id,
    )
