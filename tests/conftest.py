"""Fixtures and hooks shared by all tests. Integration fixtures use real services (see
tests/services.py); plain helpers are in tests/helpers.py.

Every test gets the marker of its gear from the directory it is in, unless it names one:

- unit: tests/unit, tests/cli. No outside service; what they serve runs in this process.
- integration: tests/integration and tests/hostile (the real Postgres and Redis, RabbitMQ
  where marked, and the simulator's HTTP peers: tests/peers.py), tests/simulator (it runs
  the simulated platform: HTTP servers, scheduler threads and, for most tests, RabbitMQ).
- e2e, faults: whole Procfile stacks with the simulator as the platform.
- bench: the benchmarks' smoke run, and tests marked `bench` for their volume (a thousand
  connections, thousands of messages, a million rows) wherever they are.

e2e, faults and bench get LONG_TIMEOUT_SECONDS unless they set a timeout of their own.
`make test-fast` runs the unit and integration gears of tests/unit, tests/cli and
tests/integration; `make test` runs everything.

A test's database work is rolled back at its end (tests/savepoints.py) unless it is marked
`commits`: then it commits for real and the tables are emptied afterwards.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from app import create_app
from simulator import Simulator
from supervisor.config import Settings
from supervisor.db import Database
from supervisor.inline import inline_services
from supervisor.services import Services
from tests import services
from tests.helpers import (
    TABLES,
    RecordingPublisher,
    alembic_config,
    clear_peer_health,
    make_settings,
)
from tests.peers import TEST_PEERS, Peers
from tests.savepoints import SavepointDatabase, rolled_back

TESTS = Path(__file__).resolve().parent
GEARS = {
    "unit": "unit",
    "cli": "unit",
    "integration": "integration",
    "hostile": "integration",
    "simulator": "integration",
    "e2e": "e2e",
    "browser": "e2e",
    "faults": "faults",
    "bench": "bench",
}
GEAR_NAMES = ("unit", "integration", "e2e", "faults", "bench")
LONG_RUNNING_GEARS = {"e2e", "faults", "bench"}
LONG_TIMEOUT_SECONDS = 900


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, a killed run) becomes an interrupt, so fixtures' teardown still
    stops every process and server the tests started."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue
        named = [gear for gear in GEAR_NAMES if item.get_closest_marker(gear)]
        folder = item.path.relative_to(TESTS).parts[0]
        gear = named[0] if named else GEARS.get(folder)
        if gear is None:
            raise pytest.UsageError(f"tests/{folder} has no gear: add it to GEARS in {__file__}")
        if not named:
            item.add_marker(getattr(pytest.mark, gear))
        if gear in LONG_RUNNING_GEARS and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_SECONDS))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with services.postgres_server_url() as server, services.throwaway_database(server) as url:
        command.upgrade(alembic_config(url), "head")
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_url() as url:
        yield services.worker_redis_url(url)


@pytest.fixture(scope="session")
def peer_simulator() -> Iterator[Simulator]:
    """The simulator's HTTP peers, one for the whole run (tests/peers.py)."""
    with Simulator(TEST_PEERS) as sim:
        yield sim


@pytest.fixture
def peers(peer_simulator: Simulator) -> Peers:
    """The peers with nothing on them yet: the run's simulator, reset."""
    peer_simulator.reset()
    return Peers(peer_simulator)


@pytest.fixture
def settings(database_url: str, redis_url: str, peers: Peers) -> Settings:
    return make_settings(database_url, redis_url, peers.base_url)


@pytest.fixture(scope="session")
def savepoint_engine(database_url: str) -> Iterator[Engine]:
    """The pool the rolled-back tests take their one connection from."""
    database = Database(database_url)
    yield database.engine
    database.dispose()


@pytest.fixture
def sv(
    request: pytest.FixtureRequest, settings: Settings, savepoint_engine: Engine
) -> Iterator[Services]:
    """A `Services` on the test services whose handed-off work runs at once. Its database
    work is rolled back at the end; marked `commits`, it commits and the tables are emptied."""
    sv = inline_services(settings)
    sv.publisher = RecordingPublisher()  # type: ignore[assignment]
    clear_peer_health(sv)
    try:
        if request.node.get_closest_marker("commits") is None:
            with rolled_back(savepoint_engine) as connection:
                sv.db = SavepointDatabase(settings.database_url, connection)
                yield sv
        else:
            try:
                yield sv
            finally:
                with sv.db.transaction() as session:
                    session.execute(text(f"TRUNCATE {TABLES}"))
    finally:
        clear_peer_health(sv)
        sv.close()


@pytest.fixture
def app(sv: Services) -> Flask:
    return create_app(services=sv)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
