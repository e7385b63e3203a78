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
