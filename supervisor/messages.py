"""User Manager messages: parsing them into one typed event per topic, and the JSON form
an event is kept in (the inbox's `body` column).

Tolerates what CONTRACT.md §5 says peers do (`user_id` or `user-id`, `frame-number` as a
string, no `supervisor-id`, fields under `payload` instead of `data`) and refuses the rest
with a short reason. Pure: no I/O, so every rule is unit-tested.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from supervisor.errors import InvalidInput
from supervisor.keys import (
    SESSION_ID_PATTERN,
    USER_ID_PATTERN,
    validate_blob_key,
    validate_extension,
)
from supervisor.messaging import session_routing_key
from supervisor.refusals import Refused

MAX_BODY_BYTES = 1024 * 1024
MAX_USERS_PER_MESSAGE = 10_000
FRAME_LIMIT = 1_048_574
ROUTING_PREFIX = session_routing_key("")


@dataclass(frozen=True, slots=True)
class _Event:
    """What every event has: its topic and the session it is for."""

    topic: ClassVar[str]
    session_id: str

    def to_body(self) -> dict[str, Any]:
        """The event as JSON: its topic and its fields, unset ones left out (the inbox's
        `body`, and the dead letter of a refused event)."""
        body: dict[str, Any] = {"topic": self.topic}
        for field in fields(self):
            value = getattr(self, field.name)
            if value not in (None, ()):
                body[field.name] = list(value) if isinstance(value, tuple) else value
        return body

    def log_fields(self) -> dict[str, Any]:
        """The `extra` fields that name the event in a log line."""
        return {
            "workload_id": self.session_id,
            "user_id": getattr(self, "user_id", None),
            "frame": getattr(self, "frame_number", None),
            "topic": self.topic,
        }


@dataclass(frozen=True, slots=True)
class NewUsers(_Event):
    topic: ClassVar[str] = "new-users"
    user_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FrameRendered(_Event):
    topic: ClassVar[str] = "user-frame-rendered"
    user_id: str
    frame_number: int
    extension: str
    temp_key: str


@dataclass(frozen=True, slots=True)
class RenderingCompleted(_Event):
    topic: ClassVar[str] = "user-rendering-completed"
    user_id: str


@dataclass(frozen=True, slots=True)
class UserDisconnected(_Event):
    topic: ClassVar[str] = "user-disconnected"
    user_id: str


@dataclass(frozen=True, slots=True)
class ErrorSendingFrame(_Event):
    topic: ClassVar[str] = "user-error-sending-frame"
    user_id: str
    frame_number: int
    blend_file_hash: str | None = None


Event = NewUsers | FrameRendered | RenderingCompleted | UserDisconnected | ErrorSendingFrame

_EVENT_TYPES: dict[str, type[Event]] = {
    kind.topic: kind
    for kind in (NewUsers, FrameRendered, RenderingCompleted, UserDisconnected, ErrorSendingFrame)
}


def from_body(body: dict[str, Any]) -> Event:
    """The event `to_body` made this JSON from. Keys other than the event type's fields are
    ignored; a missing field is refused (`incomplete-event`)."""
    topic = body.get("topic")
    kind = _EVENT_TYPES.get(topic) if isinstance(topic, str) else None
    if kind is None:
        raise Refused("unknown-topic", repr(topic)[:80])
    values: dict[str, Any] = {}
    for field in fields(kind):
        if field.name in body:
            value = body[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        return kind(**values)
    except TypeError:
        raise Refused("incomplete-event", kind.topic) from None


def _user_id(value: Any) -> str:
    if not isinstance(value, str) or not USER_ID_PATTERN.fullmatch(value):
        raise Refused("bad-user-id", repr(value)[:80])
    return value


def _frame_number(value: Any) -> int:
    if isinstance(value, bool):
        raise Refused("bad-frame-number", repr(value))
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,8}", value.strip()):
        value = int(value.strip())
    if not isinstance(value, int) or not -FRAME_LIMIT <= value <= FRAME_LIMIT:
        raise Refused("bad-frame-number", repr(value)[:80])
    return value


def _pick(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    raise Refused("missing-field", "/".join(names))


def _session_from_routing_key(routing_key: str | None) -> str:
    if not routing_key or not routing_key.startswith(ROUTING_PREFIX):
        raise Refused("bad-routing-key", repr(routing_key)[:80])
    session_id = routing_key[len(ROUTING_PREFIX) :]
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise Refused("bad-routing-key", repr(routing_key)[:80])
    return session_id


def decode(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise Refused("too-large", f"{len(raw)} bytes")
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused("not-json", str(exc)[:80]) from None
    if not isinstance(decoded, dict):
        raise Refused("not-an-object", type(decoded).__name__)
    return decoded


def parse(body: bytes | str | dict[str, Any], routing_key: str | None) -> Event:
    """Turn one message into its event, or raise Refused saying why not."""
    message = decode(body)
    session_id = _session_from_routing_key(routing_key)
    claimed = message.get("supervisor-id")
    if claimed is not None and claimed != session_id:
        raise Refused("session-mismatch", f"supervisor-id {str(claimed)[:40]!r}")
    topic = message.get("topic")
    data = message.get("data")
    if data is None:
        data = message.get("payload")
    if not isinstance(data, dict):
        raise Refused("bad-data", type(data).__name__)
    parser = _PARSERS.get(topic) if isinstance(topic, str) else None
    if parser is None:
        raise Refused("unknown-topic", repr(topic)[:80])
    return parser(session_id, data)


def _new_users(session_id: str, data: dict[str, Any]) -> NewUsers:
    users = _pick(data, "user_list", "user-list")
    if not isinstance(users, list) or not users:
        raise Refused("bad-user-list", "not a non-empty list")
    if len(users) > MAX_USERS_PER_MESSAGE:
        raise Refused("bad-user-list", f"{len(users)} users")
    claimed = data.get("session_supervisor_id")
    if claimed is not None and claimed != session_id:
        raise Refused("session-mismatch", f"session_supervisor_id {str(claimed)[:40]!r}")
    unique = tuple(dict.fromkeys(_user_id(user) for user in users))
    return NewUsers(session_id, user_ids=unique)


def _frame_rendered(session_id: str, data: dict[str, Any]) -> FrameRendered:
    temp_key = _pick(data, "image-binary-path", "image_binary_path")
    extension = _pick(data, "image-extension", "image_extension")
    try:
        temp_key = validate_blob_key(temp_key) if isinstance(temp_key, str) else None
        extension = validate_extension(extension) if isinstance(extension, str) else None
    except InvalidInput as exc:
        raise Refused("bad-key", str(exc)[:120]) from None
    if temp_key is None or extension is None:
        raise Refused("bad-key", "image path and extension must be strings")
    return FrameRendered(
        session_id,
        user_id=_user_id(_pick(data, "user-id", "user_id")),
        frame_number=_frame_number(_pick(data, "frame-number", "frame_number")),
        extension=extension,
        temp_key=temp_key,
    )


def _rendering_completed(session_id: str, data: dict[str, Any]) -> RenderingCompleted:
    return RenderingCompleted(session_id, user_id=_user_id(_pick(data, "user-id", "user_id")))


def _disconnected(session_id: str, data: dict[str, Any]) -> UserDisconnected:
    return UserDisconnected(session_id, user_id=_user_id(_pick(data, "user_id", "user-id")))


def _error_sending_frame(session_id: str, data: dict[str, Any]) -> ErrorSendingFrame:
    blend_hash = data.get("blend-file-hash", data.get("blend_file_hash"))
    if blend_hash is not None and not isinstance(blend_hash, str):
        raise Refused("bad-blend-hash", type(blend_hash).__name__)
    return ErrorSendingFrame(
        session_id,
        user_id=_user_id(_pick(data, "user-id", "user_id")),
        frame_number=_frame_number(_pick(data, "frame-number", "frame_number")),
        blend_file_hash=blend_hash[:256] if blend_hash else None,
    )


_PARSERS: dict[str, Callable[[str, dict[str, Any]], Event]] = {
    NewUsers.topic: _new_users,
    FrameRendered.topic: _frame_rendered,
    RenderingCompleted.topic: _rendering_completed,
    UserDisconnected.topic: _disconnected,
    ErrorSendingFrame.topic: _error_sending_frame,
}
