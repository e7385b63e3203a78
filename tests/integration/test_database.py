"""The database itself enforces the invariants; the schema is exactly what Alembic builds."""

from __future__ import annotations

import threading

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
