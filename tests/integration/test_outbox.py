"""The outbox drain lock on a real Postgres, with a pool of several connections."""

from __future__ import annotations

from sqlalchemy import text

from supervisor.outbox import OUTBOX_DRAIN_LOCK_ID, drain, to_user_manager
from supervisor.service import Supervisor


def drain_locks_held(supervisor: Supervisor) -> int:
    with supervisor.db.session() as session:
        return session.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND ((classid::bigint << 32) | objid::bigint) = :id"
            ),
            {"id": OUTBOX_DRAIN_LOCK_ID},
        )


def warm_pool(supervisor: Supervisor, connections: int) -> None:
    """Leave several idle connections in the pool, as a busy worker process has."""
    held = [supervisor.db.engine.connect() for _ in range(connections)]
    for connection in held:
        connection.execute(text("SELECT 1"))
    for connection in held:
        connection.close()


def test_drain_releases_its_lock_on_the_connection_that_took_it(
    supervisor: Supervisor,
) -> None:
    warm_pool(supervisor, 4)
    for round_number in range(3):
        with supervisor.db.transaction() as session:
            to_user_manager(session, "session-1", "more-users", {"user_count": round_number})

        result = drain(supervisor.db, supervisor.publisher, supervisor.peers)

        assert (result.locked, result.sent) == (True, 1)
        assert drain_locks_held(supervisor) == 0


def test_a_waiting_drain_gets_the_lock_once_the_holder_is_done(supervisor: Supervisor) -> None:
    warm_pool(supervisor, 4)
    drain(supervisor.db, supervisor.publisher, supervisor.peers)
    with supervisor.db.transaction() as session:
        to_user_manager(session, "session-1", "more-users", {"user_count": 1})

    result = drain(supervisor.db, supervisor.publisher, supervisor.peers, wait_seconds=1)

    assert (result.locked, result.sent) == (True, 1)
