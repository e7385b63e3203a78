"""Parsing of User Manager messages into typed events.

Tolerates what CONTRACT.md §5 says peers do (`user_id` or `user-id`, `frame-number` as a
string, no `supervisor-id`, fields under `payload` instead of `data`) and refuses the rest
with a short reason. Pure: no I/O, so every rule is unit-tested.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from supervisor.errors import InvalidInput
from supervisor.keys import (
    SESSION_ID_PATTERN,
    USER_ID_PATTERN,
    validate_blob_key,
    validate_extension,
)
from supervisor.messaging import session_routing_key

MAX_BODY_BYTES = 1024 * 1024
MAX_USERS_PER_MESSAGE = 10_000
FRAME_LIMIT = 1_048_574
ROUTING_PREFIX = session_routing_key("")


class RefusedMessage(Exception):
    """The message makes no sense; `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Event:
    topic: str
    session_id: str
    user_id: str | None = None
    user_ids: tuple[str, ...] = ()
    frame_number: int | None = None
    extension: str | None = None
    temp_key: str | None = None
    blend_file_hash: str | None = None

    def to_task(self) -> dict[str, Any]:
        """JSON-friendly form for a Celery task argument."""
        body = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        if self.user_ids:
            body["user_ids"] = list(self.user_ids)
        return body

    @classmethod
    def from_task(cls, body: dict[str, Any]) -> Event:
        fields = dict(body)
        fields["user_ids"] = tuple(fields.get("user_ids", ()))
        return cls(**fields)


def _user_id(value: Any) -> str:
    if not isinstance(value, str) or not USER_ID_PATTERN.fullmatch(value):
        raise RefusedMessage("bad-user-id", repr(value)[:80])
    return value


def _frame_number(value: Any) -> int:
    if isinstance(value, bool):
        raise RefusedMessage("bad-frame-number", repr(value))
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,8}", value.strip()):
        value = int(value.strip())
    if not isinstance(value, int) or not -FRAME_LIMIT <= value <= FRAME_LIMIT:
        raise RefusedMessage("bad-frame-number", repr(value)[:80])
    return value


def _pick(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    raise RefusedMessage("missing-field", "/".join(names))


def _session_from_routing_key(routing_key: str | None) -> str:
    if not routing_key or not routing_key.startswith(ROUTING_PREFIX):
        raise RefusedMessage("bad-routing-key", repr(routing_key)[:80])
    session_id = routing_key[len(ROUTING_PREFIX) :]
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise RefusedMessage("bad-routing-key", repr(routing_key)[:80])
    return session_id


def decode(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise RefusedMessage("too-large", f"{len(raw)} bytes")
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RefusedMessage("not-json", str(exc)[:80]) from None
    if not isinstance(decoded, dict):
        raise RefusedMessage("not-an-object", type(decoded).__name__)
    return decoded


def parse(body: bytes | str | dict[str, Any], routing_key: str | None) -> Event:
    """Turn one message into an Event, or raise RefusedMessage saying why not."""
    message = decode(body)
    session_id = _session_from_routing_key(routing_key)
    claimed = message.get("supervisor-id")
    if claimed is not None and claimed != session_id:
        raise RefusedMessage("session-mismatch", f"supervisor-id {str(claimed)[:40]!r}")
    topic = message.get("topic")
    data = message.get("data")
    if data is None:
        data = message.get("payload")
    if not isinstance(data, dict):
        raise RefusedMessage("bad-data", type(data).__name__)
    parser = _PARSERS.get(topic) if isinstance(topic, str) else None
    if parser is None:
        raise RefusedMessage("unknown-topic", repr(topic)[:80])
    return parser(session_id, data)


def _new_users(session_id: str, data: dict[str, Any]) -> Event:
    users = _pick(data, "user_list", "user-list")
    if not isinstance(users, list) or not users:
        raise RefusedMessage("bad-user-list", "not a non-empty list")
    if len(users) > MAX_USERS_PER_MESSAGE:
        raise RefusedMessage("bad-user-list", f"{len(users)} users")
    claimed = data.get("session_supervisor_id")
    if claimed is not None and claimed != session_id:
        raise RefusedMessage("session-mismatch", f"session_supervisor_id {str(claimed)[:40]!r}")
    unique = tuple(dict.fromkeys(_user_id(user) for user in users))
    return Event("new-users", session_id, user_ids=unique)


def _frame_rendered(session_id: str, data: dict[str, Any]) -> Event:
    temp_key = _pick(data, "image-binary-path", "image_binary_path")
    extension = _pick(data, "image-extension", "image_extension")
    try:
        temp_key = validate_blob_key(temp_key) if isinstance(temp_key, str) else None
        extension = validate_extension(extension) if isinstance(extension, str) else None
    except InvalidInput as exc:
        raise RefusedMessage("bad-key", str(exc)[:120]) from None
    if temp_key is None or extension is None:
        raise RefusedMessage("bad-key", "image path and extension must be strings")
    return Event(
        "user-frame-rendered",
        session_id,
        user_id=_user_id(_pick(data, "user-id", "user_id")),
        frame_number=_frame_number(_pick(data, "frame-number", "frame_number")),
        extension=extension,
        temp_key=temp_key,
    )


def _rendering_completed(session_id: str, data: dict[str, Any]) -> Event:
    return Event(
        "user-rendering-completed",
        session_id,
        user_id=_user_id(_pick(data, "user-id", "user_id")),
    )


def _disconnected(session_id: str, data: dict[str, Any]) -> Event:
    return Event(
        "user-disconnected", session_id, user_id=_user_id(_pick(data, "user_id", "user-id"))
    )


def _error_sending_frame(session_id: str, data: dict[str, Any]) -> Event:
    blend_hash = data.get("blend-file-hash", data.get("blend_file_hash"))
    if blend_hash is not None and not isinstance(blend_hash, str):
        raise RefusedMessage("bad-blend-hash", type(blend_hash).__name__)
    return Event(
        "user-error-sending-frame",
        session_id,
        user_id=_user_id(_pick(data, "user-id", "user_id")),
        frame_number=_frame_number(_pick(data, "frame-number", "frame_number")),
        blend_file_hash=blend_hash[:256] if blend_hash else None,
    )


_PARSERS = {
    "new-users": _new_users,
    "user-frame-rendered": _frame_rendered,
    "user-rendering-completed": _rendering_completed,
    "user-disconnected": _disconnected,
    "user-error-sending-frame": _error_sending_frame,
}
