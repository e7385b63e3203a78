"""The real intake consumer on the real RabbitMQ: valid events become tasks, and each kind
of malformed message is refused (logged, counted, dead-lettered) without stopping it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Producer

from supervisor.inline import inline_services
from supervisor.messaging import SESSION_SUPERVISOR_EXCHANGE, session_routing_key
from supervisor.refusals import REFUSED_COUNTER
from supervisor.services import Services
from supervisor.workloads import start_workload
from tasks.intake import IntakeConsumer
from tests import services
from tests.helpers import FIXTURES, RecordingPublisher, make_settings
from tests.peers import Peers


class RecordingCelery:
    """Stands in for Celery's send_task; can be told to fail like a broker that is down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []
        self.failures_left = 0

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("celery broker down (injected)")
        self.sent.append((name, args, options))


@pytest.fixture
def amqp_supervisor(database_url: str, redis_url: str, peers: Peers) -> Iterator[Services]:
    url = services.rabbitmq_url()
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(
        database_url,
        redis_url,
        peers.base_url,
        user_manager_broker_url=url,
        intake_queue=f"test-intake-{suffix}",
        dead_letter_queue=f"test-dead-letter-{suffix}",
        completion_settle_seconds=1.5,
    )
    sv = inline_services(settings)
    sv.publisher = RecordingPublisher()  # type: ignore[assignment]
    sv.redis.delete(REFUSED_COUNTER)
    yield sv
    with Connection(url) as connection:
        channel = connection.default_channel
        for name in (settings.intake_queue, settings.dead_letter_queue):
            channel.queue_delete(name)
    from sqlalchemy import text

    from tests.helpers import TABLES

    with sv.db.transaction() as session:
        session.execute(text(f"TRUNCATE {TABLES}"))
    sv.close()


@pytest.fixture
def consumer(amqp_supervisor: Services) -> Iterator[tuple[IntakeConsumer, RecordingCelery]]:
    celery = RecordingCelery()
    intake = IntakeConsumer(amqp_supervisor.topology, celery, amqp_supervisor, settle_seconds=1.5)
    thread = threading.Thread(target=intake.run_batched, daemon=True)
    thread.start()
    yield intake, celery
    intake.should_stop = True
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def session_id(amqp_supervisor: Services, peers: Peers) -> str:
    blend = (FIXTURES / "blend/blender-5.0/range_10_20.blend").read_bytes()
    peers.add_object("cust-1", "obj-1", blend)
    return start_workload(amqp_supervisor, "cust-1", "obj-1")


def publish(sv: Services, routing_key: str, body: bytes | dict, **properties: Any) -> None:
    with Connection(sv.topology.url) as connection:
        producer = Producer(connection.default_channel)
        if isinstance(body, dict):
            producer.publish(
                body,
                exchange=SESSION_SUPERVISOR_EXCHANGE,
                routing_key=routing_key,
                serializer="json",
                **properties,
            )
        else:
            producer.publish(
                body,
                exchange=SESSION_SUPERVISOR_EXCHANGE,
                routing_key=routing_key,
                content_type="application/octet-stream",
                content_encoding="binary",
                **properties,
            )


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def dead_letters(sv: Services) -> list[dict[str, Any]]:
    kept = []
    with Connection(sv.topology.url) as connection:
        queue = sv.topology.dead_letter_queue(connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            kept.append(json.loads(message.body))
    return kept


def test_valid_events_become_tasks_and_are_acked(
    amqp_supervisor: Services, consumer, session_id: str
) -> None:  # type: ignore[no-untyped-def]
    _intake, celery = consumer
    key = session_routing_key(session_id)
    publish(amqp_supervisor, key, {"topic": "new-users", "data": {"user_list": ["u1"]}})
    publish(
        amqp_supervisor,
        key,
        {"topic": "user-rendering-completed", "payload": {"user-id": "u1"}},
    )

    wait_for(lambda: len(celery.sent) == 2)

    assert [(name, options) for name, _args, options in celery.sent] == [
        ("tasks.new_users", {}),
        ("tasks.rendering_completed", {"countdown": 1.5}),
    ]
    recorded = {args[0]: inbox_body(amqp_supervisor, args[0]) for _name, args, _ in celery.sent}
    assert list(recorded.values()) == [
        {"topic": "new-users", "session_id": session_id, "user_ids": ["u1"]},
        {"topic": "user-rendering-completed", "session_id": session_id, "user_id": "u1"},
    ]


def test_a_burst_of_rendered_frames_is_recorded_and_handed_off_in_batches(
    amqp_supervisor: Services, consumer, session_id: str
) -> None:  # type: ignore[no-untyped-def]
    intake, celery = consumer
    key = session_routing_key(session_id)
    frames = list(range(300))
    with Connection(amqp_supervisor.topology.url) as connection:
        producer = Producer(connection.default_channel)
        for frame in frames:
            body = {
                "topic": "user-frame-rendered",
                "data": {
                    "user-id": "u1",
                    "frame-number": frame,
                    "image-extension": "png",
                    "image-binary-path": f"temp/u1/{frame}.png",
                },
            }
            producer.publish(
                body, exchange=SESSION_SUPERVISOR_EXCHANGE, routing_key=key, serializer="json"
            )

    def handed_off() -> list[int]:
        return [
            i for name, args, _ in celery.sent if name == "tasks.frames_rendered" for i in args[0]
        ]

    wait_for(lambda: len(handed_off()) == len(frames))
    batches = [name for name, _args, _ in celery.sent]
    assert set(batches) == {"tasks.frames_rendered"}
    assert len(batches) <= len(frames) // 10, "one task per batch, not per event"
    assert [inbox_body(amqp_supervisor, i)["frame_number"] for i in handed_off()] == frames
    intake.should_stop = True
    time.sleep(1.5)  # the consumer's connection closes: anything unacked is ready again
    with Connection(amqp_supervisor.topology.url) as connection:
        queue = amqp_supervisor.topology.declare(connection.default_channel)
        assert queue.queue_declare(passive=True).message_count == 0, "every message acked"


def inbox_body(sv: Services, inbox_id: int) -> dict[str, Any]:
    from supervisor.models import InboxEvent

    with sv.db.session() as session:
        return session.get(InboxEvent, inbox_id).body


MALFORMED = [
    (b"this is not json", "not-json"),
    (b'["a", "list"]', "not-an-object"),
    (json.dumps({"topic": "teleport", "data": {}}).encode(), "unknown-topic"),
    (json.dumps({"topic": "new-users", "data": {"user_list": []}}).encode(), "bad-user-list"),
    (
        json.dumps(
            {
                "topic": "user-frame-rendered",
                "data": {
                    "user-id": "u1",
                    "frame-number": 3,
                    "image-extension": "png",
                    "image-binary-path": "../../etc/passwd",
                },
            }
        ).encode(),
        "bad-key",
    ),
    (json.dumps({"topic": "user-disconnected", "data": {}}).encode(), "missing-field"),
    (
        json.dumps(
            {
                "topic": "user-frame-rendered",
                "data": {
                    "user-id": "u1",
                    "frame-number": 3,
                    "image-extension": "png",
                    "image-binary-path": "temp/a\x00b.png",
                },
            }
        ).encode(),
        "bad-key",
    ),
    (
        json.dumps(
            {"topic": "new-users", "data": {"user_list": [f"u{i}" for i in range(10_001)]}}
        ).encode(),
        "bad-user-list",
    ),
]


def test_malformed_messages_are_dead_lettered_and_the_consumer_survives(
    amqp_supervisor: Services, consumer, session_id: str
) -> None:  # type: ignore[no-untyped-def]
    _intake, celery = consumer
    key = session_routing_key(session_id)
    for raw, _reason in MALFORMED:
        publish(amqp_supervisor, key, raw)
    ghost = "ghost-session"
    amqp_supervisor.bindings.bind(ghost)
    publish(
        amqp_supervisor,
        session_routing_key(ghost),
        {"topic": "new-users", "data": {"user_list": ["u"]}},
    )
    publish(amqp_supervisor, key, {"topic": "new-users", "data": {"user_list": ["u1"]}})

    wait_for(lambda: len(celery.sent) == 1)
    expected = [reason for _, reason in MALFORMED] + ["unknown-session"]
    wait_for(
        lambda: (
            sum(int(v) for v in amqp_supervisor.redis.hvals(REFUSED_COUNTER)) == len(MALFORMED) + 1
        )
    )

    kept = dead_letters(amqp_supervisor)
    assert sorted(r["reason"].split(":")[0] for r in kept) == sorted(expected)
    assert {r["routing_key"] for r in kept} == {
        session_routing_key(session_id),
        session_routing_key(ghost),
    }
    assert "this is not json" in {r["body"] for r in kept}
    assert celery.sent[0][0] == "tasks.new_users"
    amqp_supervisor.bindings.unbind(ghost)


def test_users_handed_to_a_forgotten_session_go_back_to_the_user_manager(
    amqp_supervisor: Services, consumer, peers: Peers
) -> None:  # type: ignore[no-untyped-def]
    """Its row is gone (forgotten after the grace period) but its binding is not yet: the
    users are released, wrapped in a registration and a clean-up, and the message is kept."""
    forgotten = uuid.uuid4().hex
    amqp_supervisor.bindings.bind(forgotten)
    try:
        publish(
            amqp_supervisor,
            session_routing_key(forgotten),
            {"topic": "new-users", "data": {"user_list": ["u1", "u2"]}},
        )
        wait_for(lambda: peers.calls("/api/user-manager/session-supervisor/cleanup-session"))
    finally:
        amqp_supervisor.bindings.unbind(forgotten)

    assert amqp_supervisor.publisher.bodies == [
        {
            "topic": "users-released",
            "supervisor-id": forgotten,
            "data": {"user_list": ["u1", "u2"]},
        }
    ]
    [registration] = peers.calls("/api/user-manager/session-supervisor/new-session")
    assert registration.form() == {"user_count": "0", "session_supervisor_id": forgotten}
    [cleanup] = peers.calls("/api/user-manager/session-supervisor/cleanup-session")
    assert cleanup.form() == {"session_supervisor_id": forgotten}
    [kept] = dead_letters(amqp_supervisor)
    assert kept["reason"].split(":")[0] == "unknown-session"


def test_an_event_that_cannot_be_handed_off_stays_recorded_for_beat(
    amqp_supervisor: Services, consumer, session_id: str
) -> None:  # type: ignore[no-untyped-def]
    from supervisor import inbox

    _intake, celery = consumer
    celery.failures_left = 1
    publish(
        amqp_supervisor,
        session_routing_key(session_id),
        {"topic": "user-disconnected", "data": {"user_id": "u1"}},
    )

    wait_for(lambda: inbox.pending(amqp_supervisor.db) == 1)
    assert celery.sent == []
    assert dead_letters(amqp_supervisor) == []
    [(inbox_id, topic)] = inbox.due_again(amqp_supervisor.db, older_than=0)
    assert topic == "user-disconnected"
    assert inbox_body(amqp_supervisor, inbox_id)["user_id"] == "u1"


@pytest.mark.bench  # volume: a slower gear than integration
def test_every_generated_hostile_message_is_refused_or_recorded(
    amqp_supervisor: Services, consumer, session_id: str
) -> None:  # type: ignore[no-untyped-def]
    """2,000 messages from the fault suite's hypothesis strategy: none is lost on the way in."""
    from supervisor import inbox
    from tests.faults.test_hostile_messages import GHOST, _encode, generate_hostile_messages

    messages = generate_hostile_messages(2000)
    amqp_supervisor.bindings.bind(GHOST)
    keys = {"session": session_routing_key(session_id), "ghost": session_routing_key(GHOST)}
    options = {"confirm_publish": True}
    with Connection(amqp_supervisor.topology.url, transport_options=options) as connection:
        producer = Producer(connection.default_channel)
        for route, body in messages:
            producer.publish(
                _encode(body),
                exchange=SESSION_SUPERVISOR_EXCHANGE,
                routing_key=keys[route],
                content_type="application/json",
                content_encoding="binary",
            )

    def accounted() -> int:
        refused = sum(int(v) for v in amqp_supervisor.redis.hvals(REFUSED_COUNTER))
        return refused + inbox.pending(amqp_supervisor.db)

    wait_for(lambda: accounted() >= len(messages), timeout=60)
    time.sleep(0.5)
    assert accounted() == len(messages)
    amqp_supervisor.bindings.unbind(GHOST)
