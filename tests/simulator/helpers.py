"""Pieces of the simulator's tests: the peers' paths, a tap on the supervisor's exchange, and
a publisher playing the supervisor on the User Manager's exchange."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from kombu import Connection, Exchange, Producer, Queue

from simulator import Simulator

SESSION_SUPERVISOR_EXCHANGE = Exchange("SESSION_SUPERVISOR_EXCHANGE", type="direct", durable=True)
USER_MANAGER_EXCHANGE = Exchange("USER_MANAGER_EXCHANGE", type="direct", durable=True)
NEW_SESSION = "/api/user-manager/session-supervisor/new-session"
CLEANUP_SESSION = "/api/user-manager/session-supervisor/cleanup-session"
SEND = "/api/user-service/user/send-msg-to-user"
SEND_ACK = "/api/user-service/user/send-msg-to-user-with-acknowledgement"
# The spelling the original supervisor calls, which the real User Service does not serve.
SEND_ACK_MISSPELLED = "/api/user-service/user/send-msg-to-user-with-acknowledgment"


@dataclass
class Received:
    body: dict[str, Any]
    routing_key: str
    properties: dict[str, Any]
    content_type: str


class Tap:
    """An exclusive queue on SESSION_SUPERVISOR_EXCHANGE for one session's routing key."""

    def __init__(self, connection: Connection, session_id: str) -> None:
        self.routing_key = f"SESSION_SUPERVISOR_{session_id}"
        self.queue = Queue(
            f"sim-test-tap-{uuid.uuid4().hex[:8]}",
            exchange=SESSION_SUPERVISOR_EXCHANGE,
            routing_key=self.routing_key,
            exclusive=True,
            auto_delete=True,
        )(connection.default_channel)
        self.queue.declare()
        self.seen: list[Received] = []

    def _poll(self) -> Received | None:
        message = self.queue.get(no_ack=True)
        if message is None:
            return None
        received = Received(
            json.loads(message.body),
            message.delivery_info["routing_key"],
            dict(message.properties),
            message.content_type,
        )
        self.seen.append(received)
        return received

    def collect(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Exactly the next `count` messages (fails if fewer arrive in time)."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            received = self._poll()
            if received is not None:
                got.append(received)
            elif time.monotonic() > deadline:
                pytest.fail(f"got {len(got)} of {count} messages: {[r.body for r in got]}")
            else:
                time.sleep(0.01)
        return got

    def until(self, topic: str, timeout: float = 5.0) -> list[Received]:
        """Everything up to and including the first message of `topic`."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while True:
            received = self._poll()
            if received is not None:
                got.append(received)
                if received.body["topic"] == topic:
                    return got
            elif time.monotonic() > deadline:
                pytest.fail(f"no {topic} within {timeout}s; got {[r.body for r in got]}")
            else:
                time.sleep(0.01)

    def quiet(self, seconds: float) -> list[Received]:
        """Whatever arrives within `seconds` (tests expect it to be nothing)."""
        got: list[Received] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            received = self._poll()
            if received is None:
                time.sleep(0.02)
            else:
                got.append(received)
        return got


class Supervisor:
    """Plays the supervisor: registers over HTTP, demands over AMQP, talks to users over HTTP."""

    def __init__(self, connection: Connection, sim: Simulator, session_id: str) -> None:
        self.connection = connection
        self.sim = sim
        self.session_id = session_id
        self.producer = Producer(connection.default_channel, serializer="json")

    def register(self, user_count: int = 1) -> None:
        form = {"user_count": str(user_count), "session_supervisor_id": self.session_id}
        response = requests.post(self.sim.base_url + NEW_SESSION, data=form, timeout=5)
        assert response.status_code == 200

    def cleanup(self) -> None:
        form = {"session_supervisor_id": self.session_id}
        response = requests.delete(self.sim.base_url + CLEANUP_SESSION, data=form, timeout=5)
        assert response.status_code == 200

    def demand(self, topic: str, data: dict[str, Any], *, raw: Any = None) -> None:
        """Publish a demand body; `raw` replaces the whole body (bytes go out as text)."""
        options: dict[str, Any] = {}
        if raw is None:
            body: Any = {"topic": topic, "supervisor-id": self.session_id, "data": data}
        elif isinstance(raw, bytes):
            body, options = raw, {"content_type": "text/plain", "content_encoding": "binary"}
        else:
            body = raw
        self.producer.publish(
            body,
            exchange=USER_MANAGER_EXCHANGE,
            routing_key="SESSION_SUPERVISOR",
            declare=[USER_MANAGER_EXCHANGE],
            delivery_mode=2,
            **options,
        )

    def send(self, user_id: str, topic: str, data: dict[str, Any]) -> requests.Response:
        body = {"user_id": user_id, "topic": topic, "data": data}
        return requests.post(self.sim.base_url + SEND, json=body, timeout=5)

    def send_ack(self, user_id: str, topic: str, data: dict[str, Any]) -> requests.Response:
        body = {"user_id": user_id, "topic": topic, "data": data}
        return requests.post(self.sim.base_url + SEND_ACK, json=body, timeout=5)

    def get_users(self, tap: Tap, count: int) -> list[str]:
        """Register, demand `count` users and return those the new-users message names."""
        self.register(count)
        self.demand("more-users", {"user_count": count})
        [message] = tap.collect(1)
        assert message.body["topic"] == "new-users"
        return list(message.body["data"]["user_list"])
