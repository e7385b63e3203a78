"""Every Procfile process starts from a fresh checkout, the way a Heroku-style host starts it.

A host gets the repository's tracked files and nothing else: no `var/` (it is git-ignored),
no `.env`, none of the variables our other tests set (BEAT_SCHEDULE_FILE,
SIMULATOR_DATA_DIR). It runs `release` to completion, then each command exactly as the
Procfile writes it, with only the service URLs and PORT it provides. Each process gets a
checkout of its own, as each dyno gets its own filesystem: in a shared one, the simulator
creating `var/` hid that beat could not start without it.
The broker of the User Manager is the private Redis (the embedded mode of `make run`), so
nothing this test starts touches a shared broker.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from tests import services
from tests.processes import ProcfileProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/api/session-supervisor-service"
LONG_RUNNING = ("web", "worker", "beat", "flower", "simulator")
UP_FOR_SECONDS = 10.0


def fresh_checkout(target: Path) -> Path:
    """Copy the repository's tracked files as they are on disk (in CI's clean clone, exactly
    the commit). Untracked and ignored paths (var/, .env, .venv, work in progress) stay
    behind, as they would on a host."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree but still in the index
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return target


def host_env(**values: str) -> dict[str, str]:
    """A host's environment: its own few variables and the add-ons' URLs, nothing inherited
    from the test run (which may set BEAT_SCHEDULE_FILE, INTAKE_QUEUE and the like)."""
    path = ":".join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    return {"PATH": path, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **values}


def checkout(tmp_path: Path, name: str) -> Path:
    copy = fresh_checkout(tmp_path / "dynos" / name)
    assert (copy / "Procfile").is_file()
    assert not (copy / "var").exists()
    return copy


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        server = stack.enter_context(services.postgres_server_url())
        database_url = stack.enter_context(services.throwaway_database(server))
        redis_url = stack.enter_context(services.private_redis())
        yield host_env(
            PORT=str(free_port()),
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            USER_MANAGER_BROKER_URL=redis_url.rsplit("/", 1)[0] + "/1",
            # Only so that a `make run` or a parallel test on the default ports cannot
            # collide with this run; the processes' defaults are otherwise untouched.
            FLOWER_PORT=str(free_port()),
            SIMULATOR_PORT=str(free_port()),
        )


def answers(method: str, url: str) -> bool:
    try:
        return requests.request(method, url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def dyno(name: str, env: dict[str, str], tmp_path: Path) -> ProcfileProcess:
    """A process type on a checkout of its own, HOME there as a host sets it."""
    copy = checkout(tmp_path, name)
    return ProcfileProcess(name, {**env, "HOME": str(copy)}, tmp_path / "logs", cwd=copy)


def test_every_procfile_process_starts_from_a_fresh_checkout(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "logs").mkdir()

    release = dyno("release", env, tmp_path)
    assert release.run_to_end(timeout=120) == 0, f"release failed:\n{release.log_tail()}"

    processes = {name: dyno(name, env, tmp_path) for name in LONG_RUNNING}

    def logs() -> str:
        return "\n".join(f"--- {n} ---\n{p.log_tail(30)}" for n, p in processes.items())

    try:
        started = time.monotonic()
        for process in processes.values():
            process.start()
        api = f"http://127.0.0.1:{env['PORT']}{PREFIX}/"
        wait_until(lambda: answers("POST", api), 30, "web to answer")
        time.sleep(max(0.0, UP_FOR_SECONDS - (time.monotonic() - started)))

        dead = [name for name, process in processes.items() if not process.alive]
        assert not dead, f"exited within {UP_FOR_SECONDS:.0f} s: {dead}\n{logs()}"
        assert answers("POST", api), logs()
        assert answers("GET", f"http://127.0.0.1:{env['FLOWER_PORT']}/healthcheck"), logs()
        assert answers("GET", f"http://127.0.0.1:{env['FLOWER_PORT']}/metrics"), logs()
        web = f"http://127.0.0.1:{env['PORT']}"
        for path in ("/healthz", "/readyz", "/metrics"):
            assert answers("GET", web + path), f"{path}\n{logs()}"
        simulator = f"http://127.0.0.1:{env['SIMULATOR_PORT']}/simulator/state"
        assert answers("GET", simulator), logs()
        # What they wrote landed in their own checkout, the only disk a dyno has.
        assert list((processes["beat"].cwd / "var").glob("celerybeat-schedule*")), logs()
        assert (processes["simulator"].cwd / "var" / "simulator").is_dir(), logs()
    finally:
        for process in processes.values():
            process.stop()
