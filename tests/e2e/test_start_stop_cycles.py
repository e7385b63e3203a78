"""Issue 10: quick start/stop cycles leave nothing behind, on RabbitMQ and in the embedded
mode (kombu's Redis transport): no session still listed by the User Manager, no user still
mapped to one, no binding of a session's routing key on the intake queue, no workload row.

`START_STOP_CYCLES` sets how many (1,000 by hand; fewer in `make test` to keep it short)."""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from supervisor.messaging import IntakeTopology
from tests.brokers import Broker
from tests.faults.helpers import RESULTS
from tests.helpers import FIXTURES
from tests.processes import wait_until
from tests.stack import Stack, platform

BLEND = FIXTURES / "blend/blender-5.0/range_10_20.blend"
CYCLES = int(os.environ.get("START_STOP_CYCLES", "200"))
CUSTOMERS = 4


def _running(session: requests.Session, stack: Stack, customer: str) -> bool:
    answer = session.get(
        f"{stack.api}/get-workload-status", params={"customer_id": customer}, timeout=30
    )
    return answer.ok and answer.json()["status"]["workload_status"] == "running"


def _cycles(stack: Stack, customer: str, count: int) -> int:
    """Start and stop `count` workloads of one customer, each stopped after a random 0 to
    0.6 s: some before the worker prepared them, some registered, some holding users. Every
    tenth waits until it runs first, so some register however slow the worker is."""
    session = requests.Session()
    rng = random.Random(customer)
    stopped = 0
    for cycle in range(count):
        started = session.post(
            f"{stack.api}/start-workload",
            data={"customer_id": customer, "object_id": "obj"},
            timeout=30,
        )
        assert started.status_code == 200, started.text
        if cycle % 10 == 0:
            wait_until(lambda: _running(session, stack, customer), 30, f"{customer} running")
        time.sleep(rng.uniform(0, 0.6))
        answer = session.post(
            f"{stack.api}/stop-and-delete-workload", data={"customer_id": customer}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        stopped += 1
    return stopped


def _rows(database_url: str) -> int:
    engine = create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://"), poolclass=NullPool
    )
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM workloads")).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("embedded", [False, True], ids=["rabbitmq", "embedded-redis"])
def test_quick_start_stop_cycles_leave_nothing_registered_or_bound(
    tmp_path: Path, embedded: bool
) -> None:
    knobs = {"users": 4, "frame_time": 0.5, "peer_mode": "real", "seed": 8}
    with platform(tmp_path, embedded_broker=embedded, **knobs) as stack:
        stack.env.update(
            {
                "UNBIND_GRACE_SECONDS": "1",
                "INITIAL_USER_COUNT": "2",
                "WORKER_CONCURRENCY": "4",
            }
        )
        stack.start("web", "worker", "beat")
        for index in range(CUSTOMERS):
            stack.simulator.add_object(f"cycle-{index}", "obj", BLEND)
        began = time.monotonic()
        with ThreadPoolExecutor(CUSTOMERS) as pool:
            done = sum(
                pool.map(
                    lambda index: _cycles(stack, f"cycle-{index}", CYCLES // CUSTOMERS),
                    range(CUSTOMERS),
                )
            )
        cycling = time.monotonic() - began
        assert done == CYCLES // CUSTOMERS * CUSTOMERS

        simulator = stack.simulator
        broker = Broker(
            "redis" if embedded else "rabbitmq",
            IntakeTopology(
                stack.env["USER_MANAGER_BROKER_URL"],
                queue_name=stack.env["INTAKE_QUEUE"],
                dead_letter_queue_name=stack.env["DEAD_LETTER_QUEUE"],
            ),
        )

        left: dict[str, object] = {}

        def clean() -> bool:
            left.clear()
            listed = simulator.listed_sessions()
            mapped = {s: v["users"] for s, v in simulator.user_manager_sessions().items()}
            keys = broker.recorded_keys()
            rows = _rows(stack.env["DATABASE_URL"])
            if listed:
                left["listed"] = listed
            if any(mapped.values()):
                left["mapped"] = {s: users for s, users in mapped.items() if users}
            if keys:
                left["bound"] = keys
            if rows:
                left["rows"] = rows
            return not left

        try:
            wait_until(clean, 120, "every session cleaned up, released, unbound and forgotten", 1)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; left: {left}") from None
        settled = time.monotonic() - began
        registrations = sum(
            1 for entry in simulator.demand_log() if entry["topic"] == "update-user-count"
        )
        served = sum(len(entry["users"]) for entry in simulator.new_users_log())
        assert sum(simulator.cleanup_calls().values()) > 0, "no cycle got as far as registering"
        assert served > 0, "no cycle held users"
        with RESULTS.open("a") as results:
            results.write(
                json.dumps(
                    {
                        "scenario": f"start-stop-cycles-{'redis' if embedded else 'rabbitmq'}",
                        "cycles": done,
                        "cycling_s": round(cycling, 1),
                        "clean_after_s": round(settled, 1),
                        "demands_seen_by_the_user_manager": registrations,
                        "cleanup_calls": sum(simulator.cleanup_calls().values()),
                        "users_handed_over": served,
                    }
                )
                + "\n"
            )
