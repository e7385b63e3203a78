"""Fixtures for the simulator's tests: simulators on a temp data dir, and the broker connection
for the tap and the supervisor stand-in of tests/simulator/helpers.py.

Every test uses its own session id and each simulator its own private queue, so parallel runs
on one RabbitMQ do not see each other's answers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from simulator import Simulator, SimulatorConfig
from simulator.render import RenderFrame
from tests import services
from tests.simulator.helpers import Supervisor, Tap


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The real RabbitMQ; skipped when unreachable, failed when CI=true."""
    return services.rabbitmq_url()


@pytest.fixture
def session_id() -> str:
    return f"sim-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., Simulator]]:
    """Start simulators with test-friendly defaults (and optionally a renderer of their own);
    all are stopped after the test."""
    started: list[Simulator] = []

    def make(renderer: RenderFrame | None = None, **knobs: Any) -> Simulator:
        base = SimulatorConfig(
            data_dir=tmp_path / f"sim{len(started)}",
            frame_time=0.01,
            users=3,
            private_queue=True,
            broker_ready_timeout=10,
        )
        sim = Simulator(replace(base, **knobs), renderer=renderer)
        started.append(sim)
        return sim.start()

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def broker(amqp_url: str) -> Iterator[Connection]:
    with Connection(amqp_url) as connection:
        connection.ensure_connection(max_retries=1)
        yield connection


@pytest.fixture
def tap(broker: Connection, session_id: str) -> Tap:
    return Tap(broker, session_id)


@pytest.fixture
def supervisor_for(broker: Connection, session_id: str) -> Callable[[Simulator], Supervisor]:
    return lambda sim: Supervisor(broker, sim, session_id)


@pytest.fixture
def rabbit_sim(make_sim: Callable[..., Simulator], amqp_url: str) -> Callable[..., Simulator]:
    """Simulators on the real RabbitMQ."""
    return lambda **knobs: make_sim(broker_url=amqp_url, **knobs)


@pytest.fixture
def http_sim(make_sim: Callable[..., Simulator]) -> Simulator:
    """A simulator for HTTP-only tests, on kombu's in-memory transport (no broker needed)."""
    return make_sim(broker_url="memory://")
