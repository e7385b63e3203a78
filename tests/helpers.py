"""Paths, settings and stand-ins shared by tests of every kind (fixtures live in conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config

from supervisor.config import Settings
from supervisor.health import PEERS
from supervisor.models import Base
from supervisor.services import Services

# Every table of the schema, for TRUNCATE between tests that commit.
TABLES = ", ".join(Base.metadata.tables)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def make_settings(database_url: str, redis_url: str, peers_url: str, **extra: Any) -> Settings:
    """Settings for a supervisor on the test services, every peer at `peers_url`, one quick
    retry, and the User Manager's exchange in memory."""
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


def clear_peer_health(sv: Services) -> None:
    """Forget the degraded marks of the peers: they live in Redis, beyond any one test."""
    sv.redis.delete(*(f"supervisor:degraded:{peer}" for peer in PEERS))
