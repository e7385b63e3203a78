"""Fault injection: every scenario must still end with each frame stored and recorded
exactly once, with a user's bytes, no temporary file left and the status completed."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.errors import ALREADY_RUNNING
from tests.faults.helpers import FRAMES, assert_every_frame_exactly_once, fault_run
from tests.processes import ProcfileProcess, free_port, wait_until


def test_every_event_delivered_twice_and_shuffled(tmp_path: Path) -> None:
    with fault_run(tmp_path, "dup-shuffle", duplicate=1.0, reorder=0.3, quirks=True) as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        run.faults.append("every event twice, shuffled within 0.3 s")
        assert_every_frame_exactly_once(run, "duplicated-and-shuffled")
        published = run.stack.simulator.published()
        assert published["user-frame-rendered"] >= 2 * len(FRAMES)


def test_worker_killed_three_times(tmp_path: Path) -> None:
    rng = random.Random(7)
    with fault_run(tmp_path, "sigkill", frame_time=0.3) as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        worker = run.stack.processes["worker"]
        for share in (0.15, 0.4, 0.65):
            run.wait_for_frames(int(share * len(FRAMES)) + rng.randint(0, 5), timeout=120)
            worker.kill()
            run.crashes.append(time.monotonic())
            run.faults.append(f"worker SIGKILL at {run.completed_frames()} frames")
            time.sleep(rng.uniform(0.2, 1.5))
            worker.start()
        assert worker.starts == 4
        assert_every_frame_exactly_once(run, "worker-sigkill-x3")


def test_redis_flushed_mid_run(tmp_path: Path) -> None:
    with fault_run(tmp_path, "flush") as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        run.wait_for_frames(40)
        redis.Redis.from_url(run.stack.env["REDIS_URL"]).flushall()
        run.faults.append(f"FLUSHALL of the service's Redis at {run.completed_frames()} frames")
        assert_every_frame_exactly_once(run, "redis-flushed")


def test_rabbitmq_restarted_mid_run(tmp_path: Path) -> None:
    """Restarts the broker application (connections dropped, durable state kept)."""
    with fault_run(tmp_path, "rabbit") as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        run.wait_for_frames(40)
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=60)
        run.faults.append(f"RabbitMQ stopped at {run.completed_frames()} frames for 5 s")
        time.sleep(5)
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=60)
        assert_every_frame_exactly_once(run, "rabbitmq-restarted")


def test_postgres_connections_killed_mid_run(tmp_path: Path) -> None:
    with fault_run(tmp_path, "pgkill") as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        database_url = run.stack.env["DATABASE_URL"]
        engine = create_engine(database_url, poolclass=NullPool)
        for target in (30, 70):
            run.wait_for_frames(target)
            with engine.connect() as connection:
                killed = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            run.faults.append(f"{killed} connections terminated at {run.completed_frames()}")
        engine.dispose()
        assert_every_frame_exactly_once(run, "postgres-connections-killed")


def _peer_outage(tmp_path: Path, service: str, mode: str, expected_peer: str) -> None:
    with fault_run(tmp_path, f"peer-{service}") as run:
        run.stack.start("web", "worker", "beat")
        run.start_workload()
        run.wait_for_frames(30)
        run.stack.simulator.inject_fault(service, mode, 30)
        run.faults.append(f"{service} {mode} for 30 s at {run.completed_frames()} frames")

        def degraded() -> bool:
            body = run.stack.status(run.customer).get("status", {})
            return expected_peer in body.get("degraded_peers", {})

        wait_until(degraded, 25, f"status to show {expected_peer} degraded", step=0.5)
        assert_every_frame_exactly_once(run, f"{service}-{mode}-30s", timeout=240)


def test_blob_service_unreachable_for_30_seconds(tmp_path: Path) -> None:
    _peer_outage(tmp_path, "blob", "down", "blob-service")


def test_catalog_answering_500_for_30_seconds(tmp_path: Path) -> None:
    _peer_outage(tmp_path, "catalog", "error", "catalog")


def test_user_service_unreachable_for_30_seconds(tmp_path: Path) -> None:
    _peer_outage(tmp_path, "user-service", "down", "user-service")


def test_fifty_concurrent_starts_on_two_webs_and_two_workers(tmp_path: Path) -> None:
    with fault_run(tmp_path, "race") as run:
        stack = run.stack
        stack.start("web", "worker", "beat")
        second_env = dict(stack.env, PORT=str(free_port()))
        extra = [
            ProcfileProcess("web", second_env, stack.log_dir).start(),
            ProcfileProcess("worker", stack.env, stack.log_dir).start(),
        ]
        try:
            second_api = f"http://127.0.0.1:{second_env['PORT']}/api/session-supervisor-service"
            wait_until(lambda: _answers(second_api), 30, "second web to answer")
            apis = [stack.api, second_api]
            barrier = threading.Barrier(50)
            outcomes: list[tuple[int, dict]] = []

            def start(index: int) -> None:
                barrier.wait()
                response = requests.post(
                    f"{apis[index % 2]}/start-workload",
                    data={"customer_id": run.customer, "object_id": run.object_id},
                    timeout=30,
                )
                outcomes.append((response.status_code, response.json()))

            threads = [threading.Thread(target=start, args=(i,)) for i in range(50)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            run.started = time.monotonic()
            run.faults.append("50 concurrent start-workload calls over two web processes")

            codes = Counter(code for code, _ in outcomes)
            assert codes == {200: 1, 400: 49}, outcomes
            refusals = {body["message"] for code, body in outcomes if code == 400}
            assert refusals == {ALREADY_RUNNING}
            assert_every_frame_exactly_once(run, "fifty-concurrent-starts")
        finally:
            for process in extra:
                process.stop()


def _answers(api: str) -> bool:
    try:
        return requests.post(f"{api}/", timeout=1).status_code == 200
    except requests.RequestException:
        return False
