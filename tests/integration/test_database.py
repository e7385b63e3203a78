"""The database itself enforces the invariants; the schema is exactly what Alembic builds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from supervisor import db as db_module
from supervisor.errors import WorkloadAlreadyActive
from supervisor.models import Base, Workload
from supervisor.services import Services
from supervisor.workloads import start_workload
from tests import factories, services
from tests.helpers import FIXTURES, alembic_config
from tests.peers import Peers


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


def test_database_refuses_a_second_active_workload(sv: Services) -> None:
    with sv.db.transaction() as session:
        factories.workload(session, customer_id="c")
    with sv.db.session() as session:
        session.add(Workload(customer_id="c", object_id="o", target_user_count=1))
        with pytest.raises(IntegrityError, match="uq_workloads_one_active_per_customer"):
            session.commit()


def test_a_finished_workload_does_not_count_as_active(sv: Services) -> None:
    with sv.db.transaction() as session:
        factories.workload(session, customer_id="c", status="failed")
        factories.workload(session, customer_id="c")


@pytest.mark.commits
def test_racing_starts_give_exactly_one_workload(sv: Services, peers: Peers) -> None:
    """Eight threads, each with its own connection, start the same customer at once."""
    blend = (FIXTURES / "blend/blender-5.0/range_10_20.blend").read_bytes()
    peers.add_object("racer", "obj", blend)
    racers = 8
    barrier = threading.Barrier(racers)
    outcomes: list[str] = []

    def race() -> None:
        barrier.wait()
        try:
            start_workload(sv, "racer", "obj")
            outcomes.append("started")
        except WorkloadAlreadyActive:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["refused"] * (racers - 1) + ["started"]
    with sv.db.session() as session:
        count = session.scalar(
            select(func.count()).select_from(Workload).where(Workload.customer_id == "racer")
        )
    assert count == 1


@pytest.mark.bench  # volume: a slower gear than integration
def test_a_million_frames_are_created_set_based(sv: Services, peers: Peers) -> None:
    blend = (FIXTURES / "blend/blender-5.0/range_1_1000000.blend").read_bytes()
    peers.add_object("big", "obj", blend)
    start_workload(sv, "big", "obj")
    with sv.db.session() as session:
        workload = session.scalars(select(Workload).where(Workload.customer_id == "big")).one()
        rows = session.execute(
            text("SELECT count(*), min(number), max(number) FROM frames WHERE workload_id = :w"),
            {"w": workload.id},
        ).one()
    assert workload.status == "running"
    assert tuple(rows) == (1_000_000, 1, 1_000_000)


def _terminate(sv: Services, pids: list[int]) -> None:
    with sv.db.engine.connect() as connection:
        connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS integer[])) AS pid"),
            {"pids": pids},
        )


@pytest.mark.commits
def test_read_row_answers_in_autocommit_with_the_statement_timeout(
    sv: Services,
) -> None:
    db = sv.db
    pid, timeout = db.read_row("SELECT pg_backend_pid(), current_setting('statement_timeout')", {})
    assert timeout == "30s"
    assert db.read_row("SELECT 1 WHERE false", {}) is None
    with db.engine.connect() as connection:
        state = connection.execute(
            text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar_one()
    assert state == "idle", "no transaction left open on the pooled connection"


@pytest.mark.commits
def test_read_row_does_not_ping(sv: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-ping's `SELECT 1` per checkout doubled the round trips of a status poll."""

    def no_ping(_connection: object) -> bool:
        raise AssertionError("read_row pinged its connection")

    monkeypatch.setattr(sv.db.reader.dialect, "do_ping", no_ping)
    assert sv.db.read_row("SELECT 41 + 1", {}) == (42,)
    assert sv.db.read_row("SELECT 41 + 1", {}) == (42,)


def _backend(sv: Services) -> int:
    return sv.db.read_row("SELECT pg_backend_pid()", {})[0]


def _alive(sv: Services, pids: list[int]) -> list[int]:
    with sv.db.engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(CAST(:p AS integer[]))"),
                {"p": pids},
            ).scalars()
        )


@pytest.mark.commits
def test_read_row_keeps_one_connection_per_thread(sv: Services) -> None:
    mine = _backend(sv)
    theirs: list[int] = []
    thread = threading.Thread(target=lambda: theirs.append(_backend(sv)))
    thread.start()
    thread.join(timeout=30)

    assert _backend(sv) == mine, "kept between calls"
    [other] = theirs
    assert other != mine
    sv.db.dispose()
    assert _alive(sv, [mine, other]) == [], "dispose closes every thread's"


@pytest.mark.commits
def test_read_row_survives_its_connection_being_killed(sv: Services) -> None:
    """Nothing pings the kept connection: a dead one shows on use, is closed and replaced."""
    killed = _backend(sv)
    _terminate(sv, [killed])

    replacement = _backend(sv)

    assert replacement != killed
    assert _backend(sv) == replacement


@pytest.mark.commits
def test_read_row_replaces_its_connection_after_the_recycle_age(
    sv: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend(sv)
    later = time.monotonic() + db_module.RECYCLE_SECONDS + 1
    monkeypatch.setattr(db_module.time, "monotonic", lambda: later)

    assert _backend(sv) != first
    assert _alive(sv, [first]) == [], "the old one is closed, not left open"


@pytest.mark.commits
def test_read_row_raises_what_is_not_a_dead_connection(sv: Services) -> None:
    before = _backend(sv)
    with pytest.raises(psycopg.errors.DivisionByZero):
        sv.db.read_row("SELECT 1 / 0", {})
    assert _backend(sv) == before, "an error of the statement keeps the connection"


def test_a_process_first_sessions_on_several_threads_at_once_all_work(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threaded web worker's first requests come together (CI: one got an
    AssertionError, the engine set and its session factory not yet). The factory is made
    slow here, so a thread that does not wait for the set-up is caught."""
    made: list[object] = []
    real_sessionmaker = db_module.sessionmaker

    def slow_sessionmaker(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        made.append(real_sessionmaker(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(db_module, "sessionmaker", slow_sessionmaker)
    database = db_module.Database(database_url)
    threads = 4
    barrier = threading.Barrier(threads)

    def first_query(_: int) -> int:
        barrier.wait()
        with database.session() as session:
            return session.scalar(text("SELECT 1"))

    try:
        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(first_query, range(threads)))
    finally:
        database.dispose()
    assert answers == [1] * threads
    assert len(made) == 1, "one engine and session factory per process"
