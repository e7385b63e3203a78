"""scale: a 1,000,000-frame workload started, then split among 1,000 users at once.

The measured work runs in a fresh child process (`python -m bench.scale --child ...`) with
the API in-process (Flask test client) and the simulator's HTTP peers on localhost in the
parent, so the child's RSS is that of one process doing the work, as a Celery pool child
would:

* start-workload's HTTP answer, then the worker's part (download, fork+parse, one INSERT
  of every frame, registration, first demand) to "running";
* `supervisor.users.add_users` with one `new-users` event of 1,000 users, then the outbox
  drained to the simulator's User Service; the parent counts the User Service requests.

Baselines, same run, same database: one bare `INSERT ... generate_series` of as many frame
rows (rolled back) for the start; one bare set-based UPDATE of as many rows as add_users
assigned (rolled back) for the split; as many bare HTTP POSTs of the same bodies to the same
simulated peer for the delivery; the child's idle RSS for memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    MiB,
    Options,
    Row,
    at_most,
    log,
    ratio_at_most,
    run_child,
)

ROOT = Path(__file__).resolve().parent.parent
MILLION_FILE = ROOT / "tests/fixtures/blend/blender-5.0/range_1_1000000.blend"
SOURCE = ROOT / "tests/fixtures/blend/blender-5.0/default_1_250.blend"
PREFIX = "/api/session-supervisor-service"
RSS_LIMIT_MIB = 200


def run(opts: Options) -> list[Row]:
    from alembic import command
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from simulator import Simulator
    from tests import services
    from tests.blendgen import blend_with_range
    from tests.helpers import TABLES, alembic_config
    from tests.peers import TEST_PEERS, Peers

    frames, users = (10_000, 50) if opts.smoke else (1_000_000, 1000)
    rounds = opts.rounds_or(3)
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-", dir=opts.workdir) as folder,
        services.postgres_server_url() as server,
        services.throwaway_database(server) as database_url,
        services.redis_url() as redis_url,
        Simulator(TEST_PEERS) as simulator,
    ):
        peers = Peers(simulator)
        command.upgrade(alembic_config(database_url), "head")
        if frames == 1_000_000:
            blend = MILLION_FILE.read_bytes()
        else:
            blend = blend_with_range(SOURCE, Path(folder) / "s.blend", 1, frames).read_bytes()
        engine = create_engine(database_url, poolclass=NullPool)
        try:
            for index in range(rounds):
                customer = f"scale-{index}"
                simulator.reset()
                peers.add_object(customer, "obj", blend)
                args = {
                    "database_url": database_url,
                    "redis_url": redis_url,
                    "peers_url": peers.base_url,
                    "customer": customer,
                    "users": users,
                }
                result = run_child("bench.scale", args, timeout=600)
                if result["total_frames"] != frames:
                    raise RuntimeError(f"scale: {result['total_frames']} frames, not {frames}")
                result["user_service_calls"] = len(peers.calls("/send-msg-to-user"))
                results.append(result)
                log(
                    f"scale round {index + 1}/{rounds}: running in "
                    f"{result['answer_s'] + result['worker_s']:.2f}s, add_users "
                    f"{result['add_users_s']:.2f}s, {result['user_service_calls']} calls"
                )
                with engine.begin() as connection:
                    connection.execute(text(f"TRUNCATE {TABLES}"))
        finally:
            engine.dispose()
    return _rows(results, frames, users)


def _rows(results: list[dict[str, Any]], frames: int, users: int) -> list[Row]:
    def column(key: str, scale: float = 1.0) -> list[float]:
        return [r[key] * scale for r in results]

    assigned = results[-1]["assigned"]
    note = f"{frames:,} frames, {users:,} users, {assigned:,} frames assigned"
    start = [r["answer_s"] + r["worker_s"] for r in results]
    delivered = [r["add_users_s"] + r["drain_s"] for r in results]
    return [
        Row(
            "scale",
            f"start-workload -> running, {frames:,} frames",
            "s",
            start,
            column("bare_insert_s"),
            [at_most(3.0, "<= 3 s")],
            "baseline: bare INSERT ... generate_series of the same rows",
        ),
        Row("scale", "  start: HTTP answer", "s", column("answer_s")),
        Row(
            "scale",
            "  start: worker part (download, parse, insert, register)",
            "s",
            column("worker_s"),
        ),
        Row(
            "scale",
            f"add_users {users:,} users (decide + commit)",
            "s",
            column("add_users_s"),
            column("bare_update_s"),
            [at_most(1.0, "<= 1 s")],
            "baseline: bare set-based UPDATE of the assigned rows; " + note,
        ),
        Row(
            "scale",
            f"add_users {users:,} users + lists delivered",
            "s",
            delivered,
            column("bare_posts_s"),
            [at_most(1.0, "<= 1 s")],
            "baseline: the same number of bare HTTP POSTs to the same simulated peer",
        ),
        Row(
            "scale",
            f"User Service requests for {users:,} users",
            "",
            column("user_service_calls"),
            [float(users)] * len(results),
            [ratio_at_most(1.0)],
            "baseline column = number of users (one list each)",
        ),
        Row(
            "scale",
            "child RSS peak: add_users + delivery",
            "MiB",
            column("rss_split", 1 / MiB),
            column("rss_idle", 1 / MiB),
            [at_most(RSS_LIMIT_MIB, "<= 200 MiB")],
            "baseline column = the same process idle, after imports",
        ),
        Row(
            "scale",
            "child RSS peak: start to running",
            "MiB",
            column("rss_start", 1 / MiB),
            column("rss_idle", 1 / MiB),
            [at_most(RSS_LIMIT_MIB, "<= 200 MiB")],
            "the parse runs in a forked grandchild, not counted",
        ),
    ]


# --- the child ----------------------------------------------------------------------------


class _DeferredJobs:
    """Remembers hand-offs so that the API answer and the worker's part are timed apart."""

    def __init__(self) -> None:
        self.prepared: list[str] = []

    def prepare_workload(self, workload_id: str) -> None:
        self.prepared.append(workload_id)

    def drain_outbox(self) -> None:
        """Drained explicitly, and timed, after add_users."""


class _NullPublisher:
    """The User Manager's AMQP side is not what this benchmark measures."""

    def publish(self, body: dict[str, Any]) -> None:
        del body

    def close(self) -> None:
        pass


def child(args: dict[str, Any]) -> dict[str, Any]:
    import requests
    from sqlalchemy import text

    from app import create_app
    from bench.harness import RssSampler
    from supervisor.config import Settings
    from supervisor.messages import NewUsers
    from supervisor.outbox import drain, pending_count
    from supervisor.services import Services
    from supervisor.users import add_users
    from supervisor.workloads import prepare_workload

    settings = Settings(
        _env_file=None,
        database_url=args["database_url"],
        redis_url=args["redis_url"],
        user_manager_broker_url="memory://",
        mongodb_service=args["peers_url"],
        blob_service=args["peers_url"],
        user_service=args["peers_url"],
        user_manager_service=args["peers_url"],
        auth_service=args["peers_url"],
        initial_user_count=args["users"],
    )
    jobs = _DeferredJobs()
    sv = Services.from_settings(settings, jobs=jobs)
    sv.publisher = _NullPublisher()  # type: ignore[assignment]
    client = create_app(services=sv).test_client()
    out: dict[str, Any] = {}
    sampler = RssSampler(every=0.01)
    sampler.start()
    time.sleep(0.1)
    out["rss_idle"] = sampler.current()

    sampler.reset()
    began = time.perf_counter()
    response = client.post(
        f"{PREFIX}/start-workload", data={"customer_id": args["customer"], "object_id": "obj"}
    )
    out["answer_s"] = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"start-workload: {response.status_code} {response.get_data()!r}")
    workload_id = jobs.prepared[-1]
    began = time.perf_counter()
    prepare_workload(sv, workload_id)
    out["worker_s"] = time.perf_counter() - began
    out["rss_start"] = sampler.peak
    body = client.get(f"{PREFIX}/get-workload-status?customer_id={args['customer']}").get_json()
    if body["status"]["workload_status"] != "running":
        raise RuntimeError(f"not running: {body}")
    out["total_frames"] = body["status"]["total_frames"]

    event = NewUsers(workload_id, user_ids=tuple(f"user-{i:05d}" for i in range(args["users"])))
    sampler.reset()
    began = time.perf_counter()
    granted = add_users(sv, event)
    out["add_users_s"] = time.perf_counter() - began
    out["assigned"] = sum(granted["assigned"].values())
    began = time.perf_counter()
    while True:
        with sv.db.session() as session:
            if pending_count(session) == 0:
                break
        result = drain(sv.db, sv.publisher, sv.peers)
        if result.failed:
            raise RuntimeError(f"outbox drain failed: {result}")
    out["drain_s"] = time.perf_counter() - began
    out["rss_split"] = sampler.peak

    with sv.db.engine.connect() as connection:
        transaction = connection.begin()
        began = time.perf_counter()
        connection.execute(
            text(
                "INSERT INTO frames (workload_id, number) "
                "SELECT 'bench-bare-insert', n FROM generate_series(1, :count) AS n"
            ),
            {"count": out["total_frames"]},
        )
        out["bare_insert_s"] = time.perf_counter() - began
        transaction.rollback()
        transaction = connection.begin()
        began = time.perf_counter()
        connection.execute(
            text(
                "UPDATE frames SET state = 'assigned', user_id = 'user-' || (number % :users), "
                "assigned_at = now(), attempts = attempts + 1 "
                "WHERE workload_id = :workload AND number <= :count"
            ),
            {"users": args["users"], "workload": workload_id, "count": out["assigned"]},
        )
        out["bare_update_s"] = time.perf_counter() - began
        transaction.rollback()

    share = max(1, out["assigned"] // args["users"])
    payload = json.dumps(
        {
            "user_id": "user-00000",
            "topic": "start-rendering",
            "data": {"blend_file_hash": "h" * 64, "frame_list": list(range(1, share + 1))},
        }
    ).encode()
    url = f"{args['peers_url']}/api/user-service/user/bench-bare-post"
    with requests.Session() as session:
        began = time.perf_counter()
        for _ in range(args["users"]):
            session.post(
                url, data=payload, headers={"Content-Type": "application/json"}, timeout=10
            ).close()
        out["bare_posts_s"] = time.perf_counter() - began
    sampler.stop()
    sv.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="the scale benchmark's measured child")
    parser.add_argument("--child", required=True, help="JSON arguments from the harness")
    args = parser.parse_args()
    print(json.dumps(child(json.loads(args.child))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
