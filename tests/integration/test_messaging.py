"""Bodies published to USER_MANAGER_EXCHANGE on the real RabbitMQ, through the outbox."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Queue

from supervisor.messaging import (
    USER_MANAGER_EXCHANGE,
    USER_MANAGER_ROUTING_KEY,
    UserManagerPublisher,
    user_manager_body,
)
from supervisor.outbox import drain, to_user_manager
from supervisor.services import Services
from tests import services


@pytest.fixture
def amqp_url() -> str:
    return services.rabbitmq_url()


@pytest.fixture
def tap(amqp_url: str) -> Iterator[Queue]:
    """An exclusive queue bound where the User Manager listens, to read what we publish."""
    with Connection(amqp_url) as connection:
        queue = Queue(
            f"test-tap-{uuid.uuid4().hex[:8]}",
            exchange=USER_MANAGER_EXCHANGE,
            routing_key=USER_MANAGER_ROUTING_KEY,
            exclusive=True,
            auto_delete=True,
        )
        bound = queue(connection.default_channel)
        bound.declare()
        yield bound


def received(queue: Queue, count: int) -> list[tuple[dict, object]]:
    messages = []
    for _ in range(50):
        message = queue.get(no_ack=True)
        if message is not None:
            messages.append((json.loads(message.body), message))
            if len(messages) == count:
                break
        else:
            time.sleep(0.05)
    return messages


def test_publisher_sends_persistent_json_to_the_user_manager(amqp_url: str, tap: Queue) -> None:
    publisher = UserManagerPublisher(amqp_url)
    body = user_manager_body("more-users", "session-1", {"user_count": 3})
    publisher.publish(body)
    publisher.close()

    [(decoded, message)] = received(tap, 1)
    assert decoded == {
        "topic": "more-users",
        "supervisor-id": "session-1",
        "data": {"user_count": 3},
    }
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2


def test_exchange_is_direct_and_durable(amqp_url: str, tap: Queue) -> None:
    with Connection(amqp_url) as connection:
        channel = connection.default_channel
        # A passive declare with other flags fails if the broker's exchange differs.
        USER_MANAGER_EXCHANGE(channel).declare(passive=True)
    assert (USER_MANAGER_EXCHANGE.type, USER_MANAGER_EXCHANGE.durable) == ("direct", True)


def test_outbox_drains_in_order_to_rabbitmq(sv: Services, amqp_url: str, tap: Queue) -> None:
    sv.publisher = UserManagerPublisher(amqp_url)
    topics = ["more-users", "update-user-count", "users-released", "remove-users-demand-completely"]
    with sv.db.transaction() as session:
        for index, topic in enumerate(topics):
            to_user_manager(session, "session-9", topic, {"n": index})

    result = drain(sv.db, sv.publisher, sv.peers)

    assert (result.sent, result.failed) == (4, 0)
    bodies = [decoded for decoded, _ in received(tap, 4)]
    assert [b["topic"] for b in bodies] == topics
    assert {b["supervisor-id"] for b in bodies} == {"session-9"}
