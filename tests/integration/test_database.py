"""The database itself enforces the invariants; the schema is exactly what Alembic builds."""

from __future__ import annotations

import threading

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from supervisor.errors import WorkloadAlreadyActive
from supervisor.models import Base, Workload
from supervisor.service import Supervisor
from supervisor.workloads import start_workload
from tests import services
from tests.conftest import FIXTURES, alembic_config
from tests.fakes import FakePeers


def test_alembic_has_one_head(database_url: str) -> None:
    heads = ScriptDirectory.from_config(alembic_config(database_url)).get_heads()
    assert len(heads) == 1


def test_models_match_the_migrations(database_url: str) -> None:
    engine = create_engine(database_url, poolclass=NullPool)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_downgrade_and_upgrade_cleanly() -> None:
    with services.postgres_server_url() as server, services.throwaway_database(server) as url:
        config = alembic_config(url)
        command.upgrade(config, "head")
        command.downgrade(config, "base")
        command.upgrade(config, "head")


def test_database_refuses_a_second_active_workload(supervisor: Supervisor) -> None:
    with supervisor.db.transaction() as session:
        session.add(Workload(customer_id="c", object_id="o", target_user_count=1))
    with supervisor.db.session() as session:
        session.add(Workload(customer_id="c", object_id="o", target_user_count=1))
        with pytest.raises(IntegrityError, match="uq_workloads_one_active_per_customer"):
            session.commit()


def test_a_finished_workload_does_not_count_as_active(supervisor: Supervisor) -> None:
    with supervisor.db.transaction() as session:
        session.add(Workload(customer_id="c", object_id="o", target_user_count=1, status="failed"))
        session.add(Workload(customer_id="c", object_id="o", target_user_count=1))


def test_racing_starts_give_exactly_one_workload(
    supervisor: Supervisor, fake_peers: FakePeers
) -> None:
    """Eight threads, each with its own connection, start the same customer at once."""
    blend = (FIXTURES / "blend/blender-5.0/range_10_20.blend").read_bytes()
    fake_peers.add_object("racer", "obj", blend)
    racers = 8
    barrier = threading.Barrier(racers)
    outcomes: list[str] = []

    def race() -> None:
        barrier.wait()
        try:
            start_workload(supervisor, "racer", "obj")
            outcomes.append("started")
        except WorkloadAlreadyActive:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["refused"] * (racers - 1) + ["started"]
    with supervisor.db.session() as session:
        count = session.scalar(
            select(func.count()).select_from(Workload).where(Workload.customer_id == "racer")
        )
    assert count == 1


def test_a_million_frames_are_created_set_based(
    supervisor: Supervisor, fake_peers: FakePeers
) -> None:
    blend = (FIXTURES / "blend/blender-5.0/range_1_1000000.blend").read_bytes()
    fake_peers.add_object("big", "obj", blend)
    start_workload(supervisor, "big", "obj")
    with supervisor.db.session() as session:
        workload = session.scalars(select(Workload).where(Workload.customer_id == "big")).one()
        rows = session.execute(
            text("SELECT count(*), min(number), max(number) FROM frames WHERE workload_id = :w"),
            {"w": workload.id},
        ).one()
    assert workload.status == "running"
    assert tuple(rows) == (1_000_000, 1, 1_000_000)


def _terminate(supervisor: Supervisor, pids: list[int]) -> None:
    with supervisor.db.engine.connect() as connection:
        connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS integer[])) AS pid"),
            {"pids": pids},
        )


def test_read_row_answers_in_autocommit_with_the_statement_timeout(
    supervisor: Supervisor,
) -> None:
    db = supervisor.db
    pid, timeout = db.read_row("SELECT pg_backend_pid(), current_setting('statement_timeout')", {})
    assert timeout == "30s"
    assert db.read_row("SELECT 1 WHERE false", {}) is None
    with db.engine.connect() as connection:
        state = connection.execute(
            text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar_one()
    assert state == "idle", "no transaction left open on the pooled connection"


def test_read_row_does_not_ping(supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-ping's `SELECT 1` per checkout doubled the round trips of a status poll."""

    def no_ping(_connection: object) -> bool:
        raise AssertionError("read_row pinged its connection")

    monkeypatch.setattr(supervisor.db.reader.dialect, "do_ping", no_ping)
    assert supervisor.db.read_row("SELECT 41 + 1", {}) == (42,)
    assert supervisor.db.read_row("SELECT 41 + 1", {}) == (42,)


def test_read_row_survives_every_pooled_connection_being_killed(supervisor: Supervisor) -> None:
    """Without the pre-ping a dead connection shows on use: read_row drops it and goes on."""
    db = supervisor.db
    held = [db.reader.raw_connection() for _ in range(3)]
    pids = []
    for connection in held:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids.append(cursor.fetchone()[0])
    for connection in held:
        connection.close()
    _terminate(supervisor, pids)

    (pid,) = db.read_row("SELECT pg_backend_pid()", {})

    assert pid not in pids
    assert db.read_row("SELECT pg_backend_pid()", {})[0] not in pids


def test_read_row_raises_what_is_not_a_dead_connection(supervisor: Supervisor) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero):
        supervisor.db.read_row("SELECT 1 / 0", {})
    assert supervisor.db.read_row("SELECT 2", {}) == (2,), "the connection is still usable"
