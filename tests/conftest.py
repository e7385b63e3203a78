"""Fixtures shared by all tests. Integration fixtures use real services (see tests/services.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from app import create_app
from supervisor.config import Settings
from supervisor.health import PEERS
from supervisor.service import Supervisor
from tests import services
from tests.fakes import FakePeers, FakePeerServer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, a killed run) becomes an interrupt, so fixtures' teardown still
    stops every process and server the tests started."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid:
            item.add_marker(pytest.mark.integration)


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with services.postgres_server_url() as server, services.throwaway_database(server) as url:
        command.upgrade(alembic_config(url), "head")
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_url() as url:
        yield url


@pytest.fixture
def fake_peers() -> Iterator[FakePeers]:
    with FakePeerServer() as peers:
        yield peers


class RecordingPublisher:
    """Stands in for the AMQP publisher where the broker is incidental to the test."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = False

    def publish(self, body: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable (injected)")
        self.bodies.append(body)

    def topics(self) -> list[str]:
        return [body["topic"] for body in self.bodies]

    def close(self) -> None:
        pass


def make_settings(database_url: str, redis_url: str, peers_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "user_manager_broker_url": "memory://",
        "mongodb_service": peers_url,
        "blob_service": peers_url,
        "user_service": peers_url,
        "user_manager_service": peers_url,
        "auth_service": peers_url,
        "peer_retries": 1,
        "peer_timeout_seconds": 5,
        "initial_user_count": 2,
        **extra,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(database_url: str, redis_url: str, fake_peers: FakePeers) -> Settings:
    return make_settings(database_url, redis_url, fake_peers.base_url)


def clear_peer_health(sv: Supervisor) -> None:
    sv.redis.delete(*(f"supervisor:degraded:{peer}" for peer in PEERS))


@pytest.fixture
def supervisor(settings: Settings) -> Iterator[Supervisor]:
    sv = Supervisor.from_settings(settings)
    sv.publisher = RecordingPublisher()  # type: ignore[assignment]
    clear_peer_health(sv)
    yield sv
    clear_peer_health(sv)
    with sv.db.transaction() as session:
        session.execute(text("TRUNCATE workloads, frames, workload_users, outbox, inbox"))
    sv.close()


@pytest.fixture
def app(supervisor: Supervisor):  # type: ignore[no-untyped-def]
    return create_app(supervisor=supervisor)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()
