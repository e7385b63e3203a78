"""Readiness: can this process reach what it needs to do its work right now (Postgres,
Redis, the Celery broker, the User Manager's broker)? Each check gets the same short
timeout and they run side by side, so an answer never takes much longer than one timeout.
A failure says which dependency failed and the kind of error, never a URL (it may carry a
password)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kombu import Connection
from redis import Redis
from sqlalchemy import text

from supervisor.config import Settings
from supervisor.db import Database
from supervisor.recent import Recent

logger = logging.getLogger(__name__)

OK = "ok"


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(result == OK for result in self.checks.values())


def _postgres(db: Database, timeout: float) -> None:
    with db.engine.connect() as connection:
        connection.execute(text(f"SET LOCAL statement_timeout = '{int(timeout * 1000)}ms'"))
        connection.execute(text("SELECT 1"))


def _redis(redis_url: str, timeout: float) -> None:
    client = Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def _broker(url: str, timeout: float) -> None:
    """Connect and open a channel (for kombu's Redis transport, opening one pings)."""
    with Connection(url, connect_timeout=timeout) as connection:
        connection.connect()
        connection.default_channel  # noqa: B018 (the property opens the channel)


class ReadinessProbe:
    """Runs the checks; an answer is reused for `max_age` seconds, so a flood of probes
    opens at most one broker connection per second per process."""

    def __init__(
        self, settings: Settings, db: Database, *, timeout: float = 2.0, max_age: float = 1.0
    ) -> None:
        self._timeout = timeout
        self._checks: dict[str, Callable[[], None]] = {
            "postgres": lambda: _postgres(db, timeout),
            "redis": lambda: _redis(settings.redis_url, timeout),
            "broker": lambda: _broker(settings.broker_url, timeout),
        }
        if settings.user_manager_broker_url != settings.broker_url:
            self._checks["user_manager_broker"] = lambda: _broker(
                settings.user_manager_broker_url, timeout
            )
        self._answer = Recent(self._run, max_age)

    def check(self) -> Readiness:
        return self._answer.get()

    def _run(self) -> Readiness:
        pool = ThreadPoolExecutor(max_workers=len(self._checks), thread_name_prefix="readyz")
        results: dict[str, str] = {}
        try:
            futures = {name: pool.submit(check) for name, check in self._checks.items()}
            deadline = time.monotonic() + self._timeout * 2
            for name, future in futures.items():
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
                    results[name] = OK
                except Exception as exc:  # noqa: BLE001 (any failure means not ready)
                    results[name] = f"unreachable: {type(exc).__name__}"
        finally:
            # A check stuck past its timeout is left to finish on its own; the answer is not.
            pool.shutdown(wait=False, cancel_futures=True)
        readiness = Readiness(results)
        if not readiness.ready:
            logger.warning("not ready", extra={"checks": results})
        return readiness
