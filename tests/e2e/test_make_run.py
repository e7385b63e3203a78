"""`make run` as a developer uses it: a second one in the same checkout, and Ctrl-C.

Each test runs `make run` in a copy of the checkout (its embedded PostgreSQL and Redis keep
their data under the copy's var/), on this test run's venv, with free ports and HOME in the
copy, so neither a developer's `make run` nor a parallel test can be touched. make runs in a
process group of its own, as a terminal runs a foreground job: SIGINT to that group is what
Ctrl-C sends, to make and scripts/run.py alike.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests import services
from tests.e2e.test_fresh_checkout import fresh_checkout, host_env
from tests.processes import free_port, wait_until

PREFIX = "/api/session-supervisor-service"
STARTUP_SECONDS = 60.0
ALARMS = ("Failed postgres command", "killing it instead", "Traceback")

pytestmark = pytest.mark.timeout(150)


class MakeRun:
    """One `make run` in `checkout`, its output in a file."""

    def __init__(self, checkout: Path, env: dict[str, str], name: str) -> None:
        self.checkout = checkout
        self.env = env
        self.log_path = checkout.parent / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MakeRun:
        # The copy has no .venv: `make run` uses this test run's, which is already installed
        # (-o: never reinstall it from here).
        venv = Path(sys.executable).parent.parent
        command = ["make", "-o", str(venv / ".installed-dev"), f"VENV={venv}", "run"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.checkout,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        return self

    def run_py_pid(self) -> int:
        assert self.process is not None
        children = psutil.Process(self.process.pid).children()
        found = [c.pid for c in children if "scripts/run.py" in " ".join(c.cmdline())]
        assert len(found) == 1, children
        return found[0]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}{PREFIX}"

    def answers(self) -> bool:
        try:
            return requests.post(f"{self.api()}/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_until_up(self) -> None:
        """Every process has started: a stop in the middle of a start-up is not what these
        tests are about."""
        local = "http://127.0.0.1"
        others = (
            f"{local}:{self.env['FLOWER_PORT']}/healthcheck",
            f"{local}:{self.env['SIMULATOR_PORT']}/simulator/state",
        )

        def up() -> bool:
            assert self.alive, f"make run exited:\n{self.output()[-4000:]}"
            return (
                self.answers()
                and " ready." in self.output()  # the Celery worker's
                and all(_get_ok(url) for url in others)
            )

        wait_until(up, STARTUP_SECONDS, "make run's processes")

    def embedded_url(self, what: str) -> str:
        found = re.search(rf"embedded {what} at (\S+)", self.output())
        assert found, f"no embedded {what} in:\n{self.output()[-4000:]}"
        return found.group(1)

    def signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.alive:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(45)
        self.signal_group(signal.SIGKILL)


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def leftovers(checkout: Path) -> list[psutil.Process]:
    """Processes of this checkout (honcho's children, the embedded servers) still running."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        cwd = process.info["cwd"] or ""
        if str(checkout) in cmdline or cwd.startswith(str(checkout)):
            found.append(process)
    return found


@pytest.fixture
def checkout() -> Iterator[Path]:
    """Outside pytest's tmp_path: run as root, the embedded PostgreSQL runs as another user,
    which loses its way into pgdata whenever a pytest session resets its base directory to
    0700."""
    if importlib.util.find_spec("honcho") is None:
        services.missing("honcho", "`make run` starts the Procfile with it (the dev extra)")
    with tempfile.TemporaryDirectory(prefix="ss-make-run-") as folder:
        copy = fresh_checkout(Path(folder) / "checkout")
        try:
            yield copy
        finally:
            for process in leftovers(copy):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


@pytest.fixture
def env(checkout: Path) -> dict[str, str]:
    """What `make run` gets from a developer's shell, on ports of the test's own."""
    return host_env(
        HOME=str(checkout),
        PORT=str(free_port()),
        FLOWER_PORT=str(free_port()),
        SIMULATOR_PORT=str(free_port()),
    )


@pytest.fixture
def first(checkout: Path, env: dict[str, str]) -> Iterator[MakeRun]:
    run = MakeRun(checkout, env, "first").start()
    try:
        run.wait_until_up()
        yield run
    finally:
        run.stop()


def postgres_answers(url: str) -> bool:
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=NullPool
    )
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1
    except Exception:  # noqa: BLE001 - any failure means it does not answer
        return False
    finally:
        engine.dispose()


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_a_second_make_run_refuses_at_once_and_leaves_the_first_running(
    checkout: Path, env: dict[str, str], first: MakeRun
) -> None:
    postgres, redis_url = first.embedded_url("PostgreSQL"), first.embedded_url("Redis")
    pid = str(first.run_py_pid())

    started = time.monotonic()
    second = MakeRun(checkout, env, "second").start()
    try:
        code = second.wait(timeout=30)
    finally:
        second.stop()
    took = time.monotonic() - started
    said = second.output()

    facts = {
        "exited non-zero": code != 0,
        "refused within 5 s": took < 5,
        "says another make run is already running, and its pid": (
            "already running" in said and pid in said
        ),
        "started nothing": "embedded PostgreSQL at" not in said and "starting" not in said,
        "no traceback": "Traceback" not in said,
        "the first still runs": first.alive,
        "the first's API answers": first.answers(),
        "the first's PostgreSQL answers": postgres_answers(postgres),
        "the first's Redis answers": redis_answers(redis_url),
    }
    failed = [fact for fact, held in facts.items() if not held]
    assert not failed, f"not so: {failed}; took {took:.1f} s, exit {code}:\n{said[-3000:]}"


def test_ctrl_c_stops_everything_cleanly(checkout: Path, first: MakeRun) -> None:
    first.signal_group(signal.SIGINT)
    code = first.wait(timeout=60)
    said = first.output()
    stop = said[said.find("SIGINT received") :]

    facts = {
        # run.py exited 0, so make printed nothing, then ended by SIGINT as an interrupted
        # make must, for the shell to know.
        "make ended by SIGINT": code == -signal.SIGINT,
        "no make error": "make: ***" not in said,
        **{f"no {alarm!r}": alarm not in said for alarm in ALARMS},
        "ends saying it stopped": "stopped" in (stop.splitlines() or [""])[-1],
        "the API is down": not first.answers(),
        "nothing of it left running": leftovers(checkout) == [],
    }
    failed = [fact for fact, held in facts.items() if not held]
    assert not failed, f"not so: {failed}; exit {code}:\n{stop[-3000:]}"
