"""Coalescing drains: a burst of commits asks for one drain, and that drain goes round
until the outbox is quiet."""

from __future__ import annotations

from redis import Redis

from supervisor.db import Database
from supervisor.outbox.drainer import RecordsDone, drain
from supervisor.outbox.senders import BodyPublisher, PeerClients

DRAIN_AGAIN_KEY = "supervisor:outbox:drain-again"
DRAIN_SCHEDULED_KEY = "supervisor:outbox:drain-scheduled"


def request_drain(redis: Redis) -> bool:
    """Note that rows were committed; True when the caller should dispatch a drain (none is
    scheduled yet). Coalesces a burst of commits into one drain instead of one each."""
    redis.set(DRAIN_AGAIN_KEY, 1, ex=60)
    return bool(redis.set(DRAIN_SCHEDULED_KEY, 1, nx=True, ex=5))


def drain_until_quiet(
    db: Database,
    publisher: BodyPublisher,
    peers: PeerClients,
    redis: Redis,
    *,
    rounds: int = 50,
    on_all_recorded: RecordsDone | None = None,
) -> int:
    """Drain while there is work or commits arrived meanwhile. Other drainers may run at
    the same time: each round claims the lanes no other drainer holds."""
    redis.delete(DRAIN_SCHEDULED_KEY)
    sent = 0
    for _ in range(rounds):
        redis.delete(DRAIN_AGAIN_KEY)
        result = drain(db, publisher, peers, on_all_recorded=on_all_recorded)
        sent += result.sent
        if result.failed:
            return sent
        if result.sent == 0 and result.lanes_busy:
            # What is due is another drainer's; it goes round again for new commits, and a
            # commit after it stops asks for a new drain. Going round here would only spin.
            return sent
        # One more round after any send: rows held back behind a sent one are due now.
        quiet = result.sent == 0 and not result.all_recorded
        if quiet and not redis.get(DRAIN_AGAIN_KEY):
            return sent
    return sent
