"""Session bindings of the intake queue on both transports the User Manager exchanges live on:
RabbitMQ in production, kombu's Redis transport in the embedded mode of `make run`.

A binding left behind keeps routing a finished session's messages to the intake queue, and
on Redis it outlives every restart. Each check opens a new connection, as a restarted worker
would, and looks both at the broker's own record of bindings and at where a message goes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection

from supervisor.messaging import IntakeTopology
from tests import services
from tests.brokers import Broker

CYCLES = 1000


def unique_topology(url: str) -> IntakeTopology:
    run = uuid.uuid4().hex[:8]
    return IntakeTopology(
        url,
        queue_name=f"test-bindings-{run}",
        dead_letter_queue_name=f"test-bindings-dead-letter-{run}",
    )


@pytest.fixture(params=["rabbitmq", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "rabbitmq":
        topology = unique_topology(services.rabbitmq_url())
        try:
            yield Broker("rabbitmq", topology)
        finally:
            with Connection(topology.url) as connection:
                channel = connection.default_channel
                for name in (topology.queue_name, topology.dead_letter_queue_name):
                    channel.queue_delete(name)
        return
    # A Redis server of our own: the binding sets are global to a database, and the embedded
    # mode keeps the User Manager's exchanges in database 1 of the server Celery uses.
    with services.private_redis() as url:
        yield Broker("redis", unique_topology(url.rsplit("/", 1)[0] + "/1"))


def new_session() -> str:
    return uuid.uuid4().hex


def test_unbind_removes_the_binding(broker: Broker) -> None:
    session = new_session()
    broker.bindings.bind(session)
    broker.assert_bound([session])

    broker.bindings.unbind(session)

    broker.assert_unbound([session])


def test_unbind_leaves_other_sessions_bound(broker: Broker) -> None:
    finished, running = new_session(), new_session()
    broker.bindings.bind(finished)
    broker.bindings.bind(running)

    broker.bindings.unbind(finished)

    broker.assert_unbound([finished])
    broker.assert_bound([running])


def test_unbinding_twice_or_unbinding_an_unknown_session_is_harmless(broker: Broker) -> None:
    session = new_session()
    broker.bindings.bind(session)
    broker.bindings.unbind(session)
    broker.bindings.unbind(session)
    broker.bindings.unbind(new_session())

    broker.assert_unbound([session])


@pytest.mark.bench  # volume: a slower gear than integration
def test_many_bind_unbind_cycles_leave_no_binding(broker: Broker) -> None:
    bindings = broker.bindings
    sessions = [new_session() for _ in range(CYCLES)]
    for session in sessions:
        bindings.bind(session)
        bindings.unbind(session)

    broker.assert_unbound(sessions)
    recorded = broker.recorded_keys()
    if recorded is not None:
        assert recorded == set(), f"{len(recorded)} session bindings left on the queue"
