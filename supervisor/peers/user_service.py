"""The User Service of CONTRACT.md §4: messages to one connected render node, with or
without the node's acknowledgement."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import requests

from supervisor.errors import InvalidInput, PeerError
from supervisor.keys import check_text
from supervisor.peers.http import MAX_JSON_BYTES, TRANSIENT_STATUSES, PeerClient

# Every module of the package logs as "supervisor.peers", one name to filter peer trouble by.
logger = logging.getLogger(__package__)

_ACK_KEYS = ("acknowledged", "acknowledgement", "acknowledgment", "ack", "success", "ok")
_ACK_WORDS = frozenset(
    {"true", "yes", "ok", "ack", "acked", "acknowledged", "success", "received", "delivered", "1"}
)


def _is_ack_value(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in _ACK_WORDS
    return False


def _is_ack(payload: Any, *, nested: bool = False) -> bool:
    """Read an acknowledgment from a 2xx body whose shape the contract leaves open.

    `true`, "ok"-like strings, or an object with a truthy `acknowledged`,
    `acknowledgement`, `acknowledgment`, `ack`, `success` or `ok` (first found wins),
    else an ok-like `status`, else the same looked up once under `data`, `result` or
    `response`. Anything else is "not acknowledged": the frame is then rendered again,
    which costs time, whereas a false "yes" would wait for a frame that never comes.
    """
    if isinstance(payload, str):
        return payload.strip().lower() in _ACK_WORDS
    if not isinstance(payload, Mapping):
        return isinstance(payload, bool) and payload
    for key in _ACK_KEYS:
        if key in payload:
            return _is_ack_value(payload[key])
    if "status" in payload:
        return _is_ack_value(payload["status"])
    if not nested:
        for key in ("data", "result", "response"):
            if key in payload:
                return _is_ack(payload[key], nested=True)
    return False


class UserServiceClient(PeerClient):
    """The User Service: delivers messages to one connected render node."""

    peer = "user-service"
    _prefix = "/api/user-service/user"

    @staticmethod
    def _message(user_id: str, topic: str, data: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise InvalidInput("message data must be a JSON object")
        return {
            "user_id": check_text("user_id", user_id),
            "topic": check_text("topic", topic),
            "data": dict(data),
        }

    def send(self, user_id: str, topic: str, data: dict[str, Any]) -> None:
        """Fire-and-forget message; any non-2xx is a PeerError (4xx not transient)."""
        operation = "send-msg-to-user"
        body = self._message(user_id, topic, data)
        with self._post_json(operation, f"{self._prefix}/send-msg-to-user", body) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    # The real User Service spells it with an e; a deployment may have fixed the route the
    # other way round, so a 404 on one spelling is tried once on the other (CONTRACT.md §4).
    ACK_PATHS = ("send-msg-to-user-with-acknowledgement", "send-msg-to-user-with-acknowledgment")

    def send_with_ack(self, user_id: str, topic: str, data: dict[str, Any]) -> bool:
        """Send and report whether the user acknowledged (see `_is_ack` for the body).

        A 4xx other than 408/429 (e.g. user not connected) means "no", not an error; a 404
        is first retried on the other spelling of the route. 5xx, 408, 429 and transport
        failures raise a transient PeerError.
        """
        status, payload = self._call_with_ack(user_id, topic, data)
        if 200 <= status < 300:
            return _is_ack(payload)
        if status in TRANSIENT_STATUSES or status >= 500:
            raise self.peer_error(
                self.ACK_PATHS[0], f"unexpected HTTP {status}", status=status, transient=True
            )
        logger.info(
            "user-service %s: HTTP %s, taken as not acknowledged",
            self.ACK_PATHS[0],
            status,
            extra={"peer": self.peer, "peer_operation": self.ACK_PATHS[0], "peer_status": status},
        )
        return False

    def answers(self, user_id: str, topic: str, data: dict[str, Any]) -> bool | None:
        """Whether the node answers an acknowledged message at all, true or false: the real
        User Service relays the call over the node's socket, so a node it cannot reach makes
        the call fail (an error status) or outlast our timeout. That is the only liveness
        test the platform has. None when the User Service itself cannot be reached: then
        nothing is known of the node."""
        try:
            status, _payload = self._call_with_ack(user_id, topic, data)
        except PeerError as exc:
            return False if isinstance(exc.__cause__, requests.ReadTimeout) else None
        return 200 <= status < 300

    def _call_with_ack(self, user_id: str, topic: str, data: dict[str, Any]) -> tuple[int, Any]:
        """The status and body of the acknowledged send, on the first route that exists."""
        body = self._message(user_id, topic, data)
        for route in self.ACK_PATHS:
            with self._post_json(route, f"{self._prefix}/{route}", body) as resp:
                status = resp.status_code
                if status == 404 and route != self.ACK_PATHS[-1]:
                    logger.info(
                        "user-service %s: HTTP 404, trying the other spelling",
                        route,
                        extra={"peer": self.peer, "peer_operation": route, "peer_status": 404},
                    )
                    continue
                if not 200 <= status < 300:
                    return status, None
                raw = self._read_limited(resp, route, MAX_JSON_BYTES)
                if not raw:
                    return status, None
                try:
                    return status, json.loads(raw)
                except (ValueError, RecursionError):
                    return status, raw.decode("utf-8", errors="replace")
        return 404, None
