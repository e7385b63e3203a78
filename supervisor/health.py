"""Which peers are failing right now, so status can say so while the work waits on them.

A transient failure marks its peer degraded for a minute (a Redis key with a TTL); the
mark disappears by itself once calls succeed again."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from redis import Redis

from supervisor.errors import PeerError

logger = logging.getLogger(__name__)

PEERS = ("catalog", "blob-service", "user-service", "user-manager")
DEGRADED_SECONDS = 60
READ_EVERY_SECONDS = 1.0


def _key(peer: str) -> str:
    return f"supervisor:degraded:{peer}"


def failure_recorder(redis: Redis) -> Callable[[PeerError], None]:
    def record(error: PeerError) -> None:
        mark = {"operation": error.operation, "status": error.status, "since": int(time.time())}
        try:
            redis.set(_key(error.peer), json.dumps(mark), ex=DEGRADED_SECONDS)
        except Exception:
            logger.warning("could not record a peer failure", exc_info=True)

    return record


def degraded_peers(redis: Redis) -> dict[str, dict[str, object]]:
    """Peers with a recent transient failure, with the failing operation and HTTP status."""
    try:
        values = redis.mget([_key(peer) for peer in PEERS])
    except Exception:
        logger.warning("could not read peer health", exc_info=True)
        return {}
    return {peer: json.loads(value) for peer, value in zip(PEERS, values, strict=True) if value}


class PeerHealth:
    """The marks as one process sees them, read from Redis at most once a `max_age`.

    Marks live a minute, so a status poll need not pay a Redis round trip for them: a mark
    set by another process shows within `max_age`, and one set by this process (its own
    failing call) at once."""

    def __init__(self, redis: Redis, *, max_age: float = READ_EVERY_SECONDS) -> None:
        self._redis = redis
        self._max_age = max_age
        self._record = failure_recorder(redis)
        self._seen: tuple[float, dict[str, dict[str, object]]] | None = None

    def record(self, error: PeerError) -> None:
        """Mark the peer degraded for every process, and stop trusting what we last read."""
        self._record(error)
        self._seen = None

    def degraded(self) -> dict[str, dict[str, object]]:
        """Like `degraded_peers`; a copy, so a caller may put it in a body and change it."""
        seen = self._seen
        now = time.monotonic()
        if seen is None or now - seen[0] >= self._max_age:
            seen = (now, degraded_peers(self._redis))
            self._seen = seen
        return dict(seen[1])
