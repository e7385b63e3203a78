"""The object that wires the domain's dependencies together, built once per process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import redis

from supervisor.config import Settings
from supervisor.db import Database
from supervisor.health import PeerHealth
from supervisor.messaging import (
    DeadLetters,
    IntakeTopology,
    SessionBindings,
    UserManagerPublisher,
)
from supervisor.peers import Peers


class Jobs(Protocol):
    """Work handed off after a commit: Celery tasks in production (tasks.jobs.CeleryJobs),
    run at once in tests and scripts (supervisor.inline.InlineJobs)."""

    def prepare_workload(self, workload_id: str) -> None: ...

    def drain_outbox(self) -> None: ...

    def unbind_later(self, workload_id: str) -> None: ...


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: redis.Redis
    health: PeerHealth
    peers: Peers
    publisher: UserManagerPublisher
    topology: IntakeTopology
    bindings: SessionBindings
    dead_letters: DeadLetters
    jobs: Jobs

    @classmethod
    def from_settings(cls, settings: Settings, *, jobs: Jobs) -> Services:
        topology = IntakeTopology(
            settings.user_manager_broker_url,
            queue_name=settings.intake_queue,
            dead_letter_queue_name=settings.dead_letter_queue,
        )
        client = redis.Redis.from_url(settings.redis_url)
        health = PeerHealth(client)
        return cls(
            settings=settings,
            db=Database(settings.database_url),
            redis=client,
            health=health,
            peers=Peers.from_settings(settings, on_failure=health.record),
            publisher=UserManagerPublisher(settings.user_manager_broker_url),
            topology=topology,
            bindings=SessionBindings(topology),
            dead_letters=DeadLetters(topology),
            jobs=jobs,
        )

    def close(self) -> None:
        self.publisher.close()
        self.dead_letters.close()
        self.peers.close()
        self.db.dispose()
        self.redis.close()
