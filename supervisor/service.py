"""The object that wires the domain's dependencies together, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Work handed off after a commit: Celery tasks in production, inline in some tests."""

    def prepare_workload(self, workload_id: str) -> None: ...

    def drain_outbox(self) -> None: ...

    def unbind_later(self, workload_id: str) -> None: ...


@dataclass
class Supervisor:
    settings: Settings
    db: Database
    redis: redis.Redis
    health: PeerHealth
    peers: Peers
    publisher: UserManagerPublisher
    topology: IntakeTopology
    bindings: SessionBindings
    dead_letters: DeadLetters
    jobs: Jobs = field(init=False)

    @classmethod
    def from_settings(cls, settings: Settings, jobs: Jobs | None = None) -> Supervisor:
        topology = IntakeTopology(
            settings.user_manager_broker_url,
            queue_name=settings.intake_queue,
            dead_letter_queue_name=settings.dead_letter_queue,
        )
        client = redis.Redis.from_url(settings.redis_url)
        health = PeerHealth(client)
        supervisor = cls(
            settings=settings,
            db=Database(settings.database_url),
            redis=client,
            health=health,
            peers=Peers.from_settings(settings, on_failure=health.record),
            publisher=UserManagerPublisher(settings.user_manager_broker_url),
            topology=topology,
            bindings=SessionBindings(topology),
            dead_letters=DeadLetters(topology),
        )
        supervisor.jobs = jobs if jobs is not None else InlineJobs(supervisor)
        return supervisor

    def close(self) -> None:
        self.publisher.close()
        self.dead_letters.close()
        self.peers.close()
        self.db.dispose()
        self.redis.close()


class InlineJobs:
    """Runs handed-off work at once, in the caller's process (tests, one-off scripts)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def prepare_workload(self, workload_id: str) -> None:
        from supervisor.workloads import prepare_workload

        prepare_workload(self.supervisor, workload_id)

    def unbind_later(self, workload_id: str) -> None:
        """Inline there is no later: the grace period is ended when it is over (end_grace),
        by whoever calls it; here nothing is scheduled."""

    def drain_outbox(self) -> None:
        from supervisor.outbox import drain
        from supervisor.workloads import complete_workloads

        sv = self.supervisor
        drain(
            sv.db,
            sv.publisher,
            sv.peers,
            wait_seconds=10,
            on_all_recorded=lambda ids: complete_workloads(sv, ids),
        )
